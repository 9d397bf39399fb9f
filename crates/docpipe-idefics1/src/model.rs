//! The assembled Idefics1 model behind `docpipe_core::VisionLanguageModel`: prepare builds the
//! prompt, its per-token image index and the pixels; generate encodes each distinct image of
//! the batch once (tower, then perceiver), computes every cross-attention block's keys and
//! values of it once, prefills all prompts packed, and decodes greedily in one batch.
//!
//! Decoding follows transformers' `generate`: new tokens attend to the image the last prompt
//! token attends to (`image_attention_mask` keeps its last row), image tokens are banned and
//! `<end_of_utterance>` ends an answer whatever the generation config says (the model cards
//! pass both to `generate`), and finished sequences leave the batch.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use docpipe_core::{
    ChatRequest, ContentItem, FinishReason, Generation, ModelError, RequestCost,
    VisionLanguageModel,
};
use docpipe_vlm::config::{check_model_type, ConfigFile, GenerationConfig};
use docpipe_vlm::device::model_error;
use docpipe_vlm::generation::{BadWords, SequenceOutput};
use docpipe_vlm::image::ProcessedImage;
use docpipe_vlm::kv_cache::BatchCache;
use docpipe_vlm::placement::Placement;
use docpipe_vlm::request::{DetailedGeneration, PreparedImage, RecentImages};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;
use image::RgbImage;

use crate::config::{Idefics1Config, MODEL_TYPE};
use crate::perceiver::Perceiver;
use crate::processor::Processor;
use crate::prompt::{PromptBuilder, PromptFormat};
use crate::text::{ImageKeys, PrefillSequence, TextModel};
use crate::vision::VisionTransformer;

/// A request ready for generation.
#[derive(Debug, Clone)]
pub struct Idefics1Request {
    /// The prompt text, `<s>` first.
    pub prompt: String,
    /// Its token ids.
    pub input_ids: Vec<u32>,
    /// Per prompt token, the index in `images` of the image its cross-attention sees.
    pub image_index: Vec<Option<u32>>,
    /// The images, in prompt order, each one 224 × 224 crop.
    pub images: Vec<PreparedImage>,
    /// The generation limit.
    pub max_new_tokens: usize,
}

/// The results of a batch, from each sequence's generated ids, finish and first logits.
fn done(
    generated: Vec<Vec<u32>>,
    finish: Vec<Option<FinishReason>>,
    first_logits: Vec<Option<Vec<f32>>>,
) -> Vec<SequenceOutput> {
    generated
        .into_iter()
        .zip(finish)
        .zip(first_logits)
        .map(|((token_ids, f), first_logits)| SequenceOutput {
            token_ids,
            finish_reason: f.unwrap_or(FinishReason::Length),
            first_logits,
        })
        .collect()
}

/// An Idefics1 checkpoint loaded on one device or split over several.
pub struct Idefics1Model {
    model_id: String,
    config: Idefics1Config,
    processor: Processor,
    prompt: PromptBuilder,
    eos_token_ids: Vec<u32>,
    bad_words: BadWords,
    vision: VisionTransformer,
    perceiver: Option<Perceiver>,
    text: TextModel,
    recent: RecentImages,
}

impl std::fmt::Debug for Idefics1Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idefics1Model")
            .field("model_id", &self.model_id)
            .field("format", &self.prompt.format())
            .finish_non_exhaustive()
    }
}

impl Idefics1Model {
    /// Loads a checkpoint directory: tower, perceiver and embeddings on `placement.first()`,
    /// each decoder layer (with the cross-attention block before it) on
    /// `placement.layer(i, n)`, final norm and head on `placement.last()`.
    pub fn load(dir: &Path, placement: &Placement, dtype: DType) -> Result<Self, LoadError> {
        let file = ConfigFile::read(dir)?;
        check_model_type(&file.json, MODEL_TYPE, &file.path)?;
        let config = Idefics1Config::from_value(&file.json, &file.path)?;
        let processor = Processor::load(dir)?;
        let side = config.vision.image_size as u32;
        let size = processor.config.size;
        if (size.height, size.width) != (side, side) {
            return Err(LoadError::invalid(
                dir.join("preprocessor_config.json"),
                format!(
                    "images are resized to {}x{} but vision_config.image_size in config.json is {side}",
                    size.width, size.height
                ),
            ));
        }
        let prompt = PromptBuilder::load(dir, config.total_vocab_size(), config.eos_token_id)?;
        let generation = GenerationConfig::load(&dir.join("generation_config.json"), &file.json)?;
        let mut eos_token_ids = generation.eos_token_ids.clone();
        eos_token_ids.extend(prompt.end_of_utterance_id());
        let mut bad_words_ids = generation.bad_words_ids.clone();
        for id in [prompt.image_token_id(), prompt.fake_token_id()] {
            if !bad_words_ids.contains(&vec![id]) {
                bad_words_ids.push(vec![id]);
            }
        }
        let bad_words = BadWords::new(&GenerationConfig {
            eos_token_ids: eos_token_ids.clone(),
            bad_words_ids,
        });
        let weights = Weights::load(dir, dtype, placement.first())?;
        let vision = VisionTransformer::new(&config.vision, &weights.pp("model.vision_model"))?;
        let width = config.vision.hidden_size;
        let perceiver = if config.use_resampler {
            let w = weights.pp("model.perceiver_resampler");
            Some(Perceiver::new(&config.perceiver, width, &w)?)
        } else {
            None
        };
        let text = TextModel::new(&config, width, &weights, placement)?;
        Ok(Idefics1Model {
            model_id: weights.model_id(dir, &file.bytes),
            config,
            processor,
            prompt,
            eos_token_ids,
            bad_words,
            vision,
            perceiver,
            text,
            recent: RecentImages::default(),
        })
    }

    /// The same model under another `model_id`: a checkpoint fetched from the hub or a bucket is
    /// named by its origin (`org/name@<commit>`), not by the cache folder it was loaded from.
    pub fn with_model_id(mut self, model_id: String) -> Self {
        self.model_id = model_id;
        self
    }

    /// Its `config.json`.
    pub fn config(&self) -> &Idefics1Config {
        &self.config
    }

    /// The image processor.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Whether prompts use the base or the instruct chat format.
    pub fn prompt_format(&self) -> PromptFormat {
        self.prompt.format()
    }

    /// The width of the logits: the vocabulary and the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.config.total_vocab_size()
    }

    /// The ids that end an answer: the generation config's and `<end_of_utterance>`.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The image tokens the decoder reads per image, `(images × tokens, width)`, for distinct
    /// preprocessed images.
    pub fn image_states(&self, images: &[&ProcessedImage]) -> candle_core::Result<Tensor> {
        let tower = self.vision.forward(images)?;
        match &self.perceiver {
            Some(p) => p.forward(&tower, images.len(), self.vision.tokens()),
            None => Ok(tower),
        }
    }

    /// Greedy generation for a batch; with `keep_first_logits`, also each request's raw logits
    /// of its first step (before any ban).
    pub fn generate_detailed(
        &self,
        batch: &[&Idefics1Request],
        keep_first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        let decoded = self
            .decode_batch(batch, keep_first_logits)
            .map_err(model_error)?;
        batch
            .iter()
            .zip(decoded)
            .map(|(request, out)| {
                out.into_detailed(request.input_ids.len(), |ids| self.prompt.decode(ids))
            })
            .collect()
    }

    /// Each distinct image of the batch once (by page `Arc`), and per request the batch index
    /// of each of its images.
    fn distinct_images<'a>(
        batch: &[&'a Idefics1Request],
    ) -> (Vec<&'a PreparedImage>, Vec<Vec<usize>>) {
        let mut distinct: Vec<&PreparedImage> = Vec::new();
        let of_request = batch
            .iter()
            .map(|r| {
                r.images
                    .iter()
                    .map(|image| {
                        match distinct
                            .iter()
                            .position(|d| Arc::ptr_eq(&d.source, &image.source))
                        {
                            Some(i) => i,
                            None => {
                                distinct.push(image);
                                distinct.len() - 1
                            }
                        }
                    })
                    .collect()
            })
            .collect();
        (distinct, of_request)
    }

    /// The image keys of a batch's distinct images.
    fn image_keys(&self, images: &[&PreparedImage]) -> candle_core::Result<ImageKeys> {
        if images.is_empty() {
            return Ok(self.text.no_image_keys());
        }
        let pixels: Vec<&ProcessedImage> = images.iter().map(|i| &i.crops[0]).collect();
        let states = self.image_states(&pixels)?;
        self.text
            .image_keys(&states, images.len(), self.config.image_tokens())
    }

    /// Greedy decoding of a batch: generated ids, why each stopped, first-step logits.
    fn decode_batch(
        &self,
        batch: &[&Idefics1Request],
        keep_first_logits: bool,
    ) -> candle_core::Result<Vec<SequenceOutput>> {
        let vocab = self.vocab_size();
        let mut tokens: Vec<Vec<u32>> = batch.iter().map(|r| r.input_ids.clone()).collect();
        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); batch.len()];
        let mut finish: Vec<Option<FinishReason>> = batch
            .iter()
            .map(|r| (r.max_new_tokens == 0).then_some(FinishReason::Length))
            .collect();
        let mut first_logits: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
        let mut active: Vec<usize> = (0..batch.len()).filter(|&i| finish[i].is_none()).collect();
        if active.is_empty() {
            return Ok(done(generated, finish, first_logits));
        }
        let (images, image_of) = Self::distinct_images(batch);
        let keys = self.image_keys(&images)?;
        // Per token of each request, the batch image it attends to.
        let token_images: Vec<Vec<Option<usize>>> = batch
            .iter()
            .zip(&image_of)
            .map(|(r, of)| {
                r.image_index
                    .iter()
                    .map(|i| i.map(|i| of[i as usize]))
                    .collect()
            })
            .collect();
        let embeds = active
            .iter()
            .map(|&i| self.text.embed(&batch[i].input_ids))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sequences: Vec<PrefillSequence<'_>> = active
            .iter()
            .map(|&i| PrefillSequence {
                images: &token_images[i],
            })
            .collect();
        let (mut logits, kvs) = self
            .text
            .prefill(&Tensor::cat(&embeds, 0)?, &sequences, &keys)?;
        drop(embeds);
        if keep_first_logits {
            for (row, &i) in logits.to_vec2::<f32>()?.into_iter().zip(&active) {
                first_logits[i] = Some(row);
            }
        }
        let limits: Vec<usize> = active
            .iter()
            .map(|&i| batch[i].input_ids.len() + batch[i].max_new_tokens)
            .collect();
        let mut cache = BatchCache::default();
        cache.extend(&kvs, &limits)?;
        drop(kvs);
        // New tokens keep the image of the last prompt token.
        let rows: Vec<Option<usize>> = active
            .iter()
            .map(|&i| token_images[i].last().copied().flatten())
            .collect();
        let mut cross = self
            .text
            .stacked_kv(&keys, &rows, self.config.image_tokens())?;
        drop(keys);
        loop {
            let bans: Vec<Vec<u32>> = active
                .iter()
                .map(|&i| {
                    let mut b = self.bad_words.banned(&tokens[i]);
                    b.retain(|&id| (id as usize) < vocab);
                    b
                })
                .collect();
            let masked = if bans.iter().all(Vec::is_empty) {
                logits
            } else {
                let mut mask = vec![0f32; active.len() * vocab];
                for (row, banned) in bans.iter().enumerate() {
                    for &id in banned {
                        mask[row * vocab + id as usize] = f32::NEG_INFINITY;
                    }
                }
                let device = logits.device().clone();
                (logits + Tensor::from_vec(mask, (active.len(), vocab), &device)?)?
            };
            let next = masked.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
            for (&i, &token) in active.iter().zip(&next) {
                tokens[i].push(token);
                generated[i].push(token);
                if self.eos_token_ids.contains(&token) {
                    finish[i] = Some(FinishReason::Stop);
                } else if generated[i].len() >= batch[i].max_new_tokens {
                    finish[i] = Some(FinishReason::Length);
                }
            }
            // Rows of the caches follow `active`; finished sequences leave all of them.
            let keep: Vec<usize> = (0..active.len())
                .filter(|&r| finish[active[r]].is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache.retain(&keep)?;
                for block in &mut cross {
                    block.retain(&keep)?;
                }
            }
            let ids: Vec<u32> = keep.iter().map(|&r| next[r]).collect();
            active = keep.iter().map(|&r| active[r]).collect();
            logits = self
                .text
                .decode(&self.text.embed(&ids)?, &mut cache, &cross)?;
        }
        Ok(done(generated, finish, first_logits))
    }
}

impl VisionLanguageModel for Idefics1Model {
    type Prepared = Idefics1Request;

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn image_longest_edge(&self) -> u32 {
        let size = self.processor.config.size;
        size.height.max(size.width)
    }

    fn prepare(&self, request: &ChatRequest) -> Result<Idefics1Request, ModelError> {
        let invalid = |m: String| ModelError::InvalidRequest(m);
        let items = request
            .messages
            .iter()
            .flat_map(|m| &m.content)
            .filter(|i| matches!(i, ContentItem::Image { .. }))
            .count();
        if items != request.images.len() {
            return Err(invalid(format!(
                "the messages have {items} image items but the request has {} images",
                request.images.len()
            )));
        }
        let prompt = self
            .prompt
            .build(&request.messages, request.images.len())
            .map_err(|e| invalid(e.to_string()))?;
        let embeddable = self.vocab_size();
        if let Some(id) = prompt
            .input_ids
            .iter()
            .find(|&&id| id as usize >= embeddable)
        {
            return Err(invalid(format!(
                "the prompt has token id {id}, past the model's {embeddable} embeddings (a special token this checkpoint was not trained with?)"
            )));
        }
        let images = request
            .images
            .iter()
            .map(|source| {
                if source.width() == 0 || source.height() == 0 {
                    return Err(invalid(docpipe_vlm::ImageError::Empty.to_string()));
                }
                let crops = self.recent.get_or_insert(source, |image: &RgbImage| {
                    Ok(vec![self.processor.preprocess(image)])
                })?;
                Ok(PreparedImage {
                    source: source.clone(),
                    crops,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Idefics1Request {
            prompt: prompt.text,
            input_ids: prompt.input_ids,
            image_index: prompt.image_index,
            images,
            max_new_tokens: request.max_new_tokens,
        })
    }

    fn cost(&self, prepared: &Idefics1Request) -> RequestCost {
        RequestCost {
            prompt_tokens: prepared.input_ids.len(),
            max_new_tokens: prepared.max_new_tokens,
            image_patches: prepared.images.len() * self.vision.tokens(),
        }
    }

    fn generate(&self, batch: &[&Idefics1Request]) -> Result<Vec<Generation>, ModelError> {
        Ok(self
            .generate_detailed(batch, false)?
            .into_iter()
            .map(|d| d.generation)
            .collect())
    }
}
