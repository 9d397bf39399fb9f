//! What `Florence2Processor` does to a request: the image squashed to the processor's fixed
//! size with PIL's filter, rescaled and normalized (`CLIPImageProcessor` with
//! `do_center_crop` off); the text run through the task table, wrapped in `<s>`…`</s>` and
//! tokenized without further special tokens. The image tokens are not tokenized: the model
//! puts the projected image features in front of the prompt embeddings, which is what both the
//! remote code and transformers' `<image>` placeholders amount to.

use std::path::{Path, PathBuf};

use docpipe_vlm::config::{processor_config, Normalization, Resample};
use docpipe_vlm::image::{Normalizer, ProcessedImage};
use docpipe_vlm::resample::resize;
use docpipe_vlm::LoadError;
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

/// `CLIPImageProcessor`'s defaults, with Florence-2's fixed size where CLIP has a shortest
/// edge (every Florence-2 checkpoint sets its own).
fn processor_defaults() -> Value {
    json!({
        "do_resize": true, "size": {"height": 768, "width": 768}, "resample": 3,
        "do_center_crop": false, "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    })
}

/// A `{"height", "width"}` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Size {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// The image-processor settings Florence-2 uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProcessorConfig {
    /// Resize at all (Florence-2's tower needs the configured size, so this must be on).
    pub do_resize: bool,
    /// The size every image is squashed to.
    pub size: Size,
    /// The PIL filter.
    pub resample: Resample,
    /// Center cropping (must be off, or a no-op at `size`).
    pub do_center_crop: bool,
    /// The crop size, when cropping.
    pub crop_size: Option<Size>,
    /// Rescale and normalization.
    #[serde(flatten)]
    pub normalization: Normalization,
}

impl ProcessorConfig {
    /// Reads the checkpoint's image-processor files (`preprocessor_config.json` and / or
    /// transformers 5's `processor_config.json`).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let config: ProcessorConfig = processor_config(dir, processor_defaults())?;
        let crop_is_noop =
            !config.do_center_crop || config.crop_size.is_none_or(|c| c == config.size);
        let path = dir.join("preprocessor_config.json");
        if !config.do_resize {
            return Err(LoadError::invalid(
                path,
                "do_resize is off: Florence-2's vision tower needs the configured size",
            ));
        }
        if !crop_is_noop {
            return Err(LoadError::invalid(
                path,
                "a center crop to another size than `size` is not supported",
            ));
        }
        if config.size.height == 0 || config.size.width == 0 {
            return Err(LoadError::invalid(path, "size must not be 0"));
        }
        Ok(config)
    }
}

/// `Image.resize((width, height), filter)` of Pillow 13, whose two passes (with a uint8
/// image between them) run in the order that makes the smaller intermediate image: vertical
/// first when `in_w × out_h < out_w × in_h`, horizontal first otherwise. The order changes
/// bicubic results by up to 17 levels at sharp edges. `docpipe_vlm::resample::resize` runs the
/// horizontal pass first when both sides shrink, which differs for pages shrunk more in height
/// than in width (most pages squashed to 768 × 768), so the passes are run one at a time here:
/// a pass whose size does not change is skipped by `resize`.
fn squash(image: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    if (in_w as u64) * (height as u64) < (width as u64) * (in_h as u64) {
        resize(&resize(image, in_w, height, filter), width, height, filter)
    } else {
        resize(&resize(image, width, in_h, filter), width, height, filter)
    }
}

/// The tasks `Florence2Processor` replaces by a sentence: the whole prompt must be the token.
const TASKS_WITHOUT_INPUT: &[(&str, &str)] = &[
    ("<OCR>", "What is the text in the image?"),
    (
        "<OCR_WITH_REGION>",
        "What is the text in the image, with regions?",
    ),
    ("<CAPTION>", "What does the image describe?"),
    (
        "<DETAILED_CAPTION>",
        "Describe in detail what is shown in the image.",
    ),
    (
        "<MORE_DETAILED_CAPTION>",
        "Describe with a paragraph what is shown in the image.",
    ),
    (
        "<OD>",
        "Locate the objects with category name in the image.",
    ),
    (
        "<DENSE_REGION_CAPTION>",
        "Locate the objects in the image, with their descriptions.",
    ),
    (
        "<REGION_PROPOSAL>",
        "Locate the region proposals in the image.",
    ),
];

/// The tasks whose sentence takes the rest of the prompt as `{input}`.
const TASKS_WITH_INPUT: &[(&str, &str)] = &[
    (
        "<CAPTION_TO_PHRASE_GROUNDING>",
        "Locate the phrases in the caption: {input}",
    ),
    (
        "<REFERRING_EXPRESSION_SEGMENTATION>",
        "Locate {input} in the image with mask",
    ),
    (
        "<REGION_TO_SEGMENTATION>",
        "What is the polygon mask of region {input}",
    ),
    (
        "<OPEN_VOCABULARY_DETECTION>",
        "Locate {input} in the image.",
    ),
    ("<REGION_TO_CATEGORY>", "What is the region {input}?"),
    (
        "<REGION_TO_DESCRIPTION>",
        "What does the region {input} describe?",
    ),
    ("<REGION_TO_OCR>", "What text is in the region {input}?"),
];

/// A task token that is not the whole prompt (`Florence2Processor` raises the same).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task token {task} must be the only content of the prompt")]
pub struct TaskTokenError {
    /// The task token found.
    pub task: &'static str,
}

/// The prompt the model sees for `text`, as `Florence2Processor._construct_prompts` builds it.
/// Anything not in the task table, such as the DocVQA fine-tune's `<DocVQA>` prefix, is left
/// as it is and tokenized as text.
pub fn expand_task_prompt(text: &str) -> Result<String, TaskTokenError> {
    let mut prompt = text.to_string();
    if let Some(&(task, sentence)) = TASKS_WITHOUT_INPUT.iter().find(|(t, _)| prompt.contains(t)) {
        if prompt != task {
            return Err(TaskTokenError { task });
        }
        prompt = sentence.to_string();
    }
    if let Some(&(task, sentence)) = TASKS_WITH_INPUT.iter().find(|(t, _)| prompt.contains(t)) {
        let input = prompt.replace(task, "");
        prompt = sentence.replace("{input}", input.trim());
    }
    Ok(prompt)
}

/// The image processor and tokenizer of a checkpoint.
pub struct Processor {
    /// The image settings.
    pub config: ProcessorConfig,
    normalizer: Normalizer,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("config", &self.config)
            .field("tokenizer", &self.tokenizer_path)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// Reads the image-processor files and `tokenizer.json` of `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let config = ProcessorConfig::load(dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| LoadError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        for special in ["<s>", "</s>"] {
            if tokenizer.token_to_id(special).is_none() {
                return Err(LoadError::Tokenizer {
                    path: tokenizer_path,
                    message: format!("no {special} token"),
                });
            }
        }
        Ok(Processor {
            normalizer: Normalizer::new(&config.normalization),
            config,
            tokenizer,
            tokenizer_path,
        })
    }

    /// The image squashed to the configured size, rescaled and normalized, channel-first.
    pub fn preprocess(&self, image: &RgbImage) -> ProcessedImage {
        let Size { height, width } = self.config.size;
        self.normalizer
            .apply(&squash(image, width, height, self.config.resample))
    }

    /// The encoder's text ids for an already expanded prompt: `<s>`, the prompt, `</s>`.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>, tokenizers::Error> {
        let text = format!("<s>{prompt}</s>");
        Ok(self.tokenizer.encode(text, false)?.get_ids().to_vec())
    }

    /// Generated ids as text, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, tokenizers::Error> {
        self.tokenizer.decode(ids, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_tokens_expand_as_the_processor_does() {
        assert_eq!(
            expand_task_prompt("<OCR>").unwrap(),
            "What is the text in the image?"
        );
        assert_eq!(
            expand_task_prompt("<OPEN_VOCABULARY_DETECTION> red car ").unwrap(),
            "Locate red car in the image."
        );
        assert_eq!(
            expand_task_prompt("<DocVQA>What is the date?").unwrap(),
            "<DocVQA>What is the date?"
        );
        assert_eq!(
            expand_task_prompt("<OCR> please").unwrap_err(),
            TaskTokenError { task: "<OCR>" }
        );
    }
}
