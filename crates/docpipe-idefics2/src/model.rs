//! The assembled model: checkpoint loading, request preparation and the
//! `docpipe_core::VisionLanguageModel` implementation the pipeline uses.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use candle_core::{DType, Device, Tensor};
use docpipe_core::{
    fnv1a64, ChatRequest, DeviceSpec, Dtype, Generation, ModelError, RequestCost, VisionLanguageModel,
};
use image::RgbImage;

use crate::config::{read_json, GenerationConfig, Idefics2Config, ProcessorConfig};
use crate::connector::Connector;
use crate::error::{DeviceError, ImageError, LoadError};
use crate::generation::{generate, SequenceInput, SequenceOutput};
use crate::processor::{ImageProcessor, ProcessedImage};
use crate::prompt::PromptBuilder;
use crate::text::TextModel;
use crate::vision::{patch_grid, VisionTower};
use crate::weights::Weights;

/// How many recently preprocessed images `prepare` remembers, so that several questions about
/// one page preprocess it once.
const RECENT_IMAGES: usize = 16;

/// An input image of a prepared request: the page it came from (for sharing its encoding
/// within a batch) and its preprocessed crops.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub source: Arc<RgbImage>,
    pub crops: Arc<Vec<ProcessedImage>>,
}

/// A request ready for generation.
#[derive(Debug, Clone)]
pub struct Idefics2Request {
    pub input_ids: Vec<u32>,
    pub images: Vec<PreparedImage>,
    pub max_new_tokens: usize,
}

/// A generation plus, when asked for, the raw logits that chose its first token.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailedGeneration {
    pub generation: Generation,
    pub first_logits: Option<Vec<f32>>,
}

/// The candle device of one replica. `cuda:all` is a pipeline-level spec, expanded into
/// `cuda:N` devices before any model is loaded.
pub fn candle_device(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::CudaAll => Err(DeviceError::NotExpanded),
        DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NoCudaBuild(spec)),
        DeviceSpec::Cuda(ordinal) => {
            Device::new_cuda(ordinal).map_err(|source| DeviceError::Unavailable {
                device: spec,
                source,
            })
        }
    }
}

/// The candle dtype of weights and activations.
pub fn candle_dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::Bf16 => DType::BF16,
    }
}

fn model_error(e: candle_core::Error) -> ModelError {
    let message = e.to_string();
    if message.to_lowercase().contains("out of memory") {
        ModelError::OutOfMemory(message)
    } else {
        ModelError::Device(message)
    }
}

/// Recently preprocessed pages, keyed by their `Arc` (held weakly so a page can be freed).
type RecentImages = Vec<(Weak<RgbImage>, Arc<Vec<ProcessedImage>>)>;

/// An Idefics2 checkpoint loaded on one device.
pub struct Idefics2Model {
    model_id: String,
    config: Idefics2Config,
    generation: GenerationConfig,
    processor: ImageProcessor,
    prompt: PromptBuilder,
    vision: VisionTower,
    connector: Connector,
    text: TextModel,
    recent_images: Mutex<RecentImages>,
}

impl std::fmt::Debug for Idefics2Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idefics2Model")
            .field("model_id", &self.model_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Idefics2Model {
    /// Loads a checkpoint directory in the hub layout.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        let config_bytes = std::fs::read(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config_json = read_json(&config_path)?;
        let config = Idefics2Config::from_value(&config_json, &config_path)?;
        let generation = GenerationConfig::load(&dir.join("generation_config.json"), &config_json)?;
        let processor = ImageProcessor::new(ProcessorConfig::load(dir)?);
        let prompt = PromptBuilder::load(
            dir,
            processor.config().image_seq_len,
            processor.images_per_input(),
            config.image_token_id,
        )?;
        if processor.config().image_seq_len != config.perceiver.n_latents {
            return Err(LoadError::invalid(
                dir.join("processor_config.json"),
                format!(
                    "image_seq_len {} differs from the perceiver's {} latents",
                    processor.config().image_seq_len,
                    config.perceiver.n_latents
                ),
            ));
        }
        let weights = Weights::load(dir, dtype, device)?;
        let vision = VisionTower::load(&weights, "model.vision_model", &config.vision)?;
        let connector = Connector::load(&weights, "model.connector", &config)?;
        let text = TextModel::load(&weights, "model.text_model", &config.text)?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "idefics2".to_string());
        let hash = fnv1a64(&[&config_bytes, weights.fingerprint()]);
        Ok(Idefics2Model {
            model_id: format!("{name}@{:08x}", hash >> 32),
            config,
            generation,
            processor,
            prompt,
            vision,
            connector,
            text,
            recent_images: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &Idefics2Config {
        &self.config
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn prompt(&self) -> &PromptBuilder {
        &self.prompt
    }

    /// Vision tower output (after the post layer norm) for one crop's valid patches.
    pub fn vision_hidden(&self, crop: &ProcessedImage) -> candle_core::Result<Tensor> {
        Ok(self.vision.forward(std::slice::from_ref(crop))?.0)
    }

    /// Connector output for one input image's crops: `(crops · image_seq_len, text hidden)`.
    /// The crops go through the towers together (see [`VisionTower::forward`]).
    pub fn image_features(&self, crops: &[ProcessedImage]) -> candle_core::Result<Tensor> {
        let (patches, lens) = self.vision.forward(crops)?;
        self.connector.forward(&patches, &lens)
    }

    fn preprocess_shared(
        &self,
        image: &Arc<RgbImage>,
    ) -> Result<Arc<Vec<ProcessedImage>>, ModelError> {
        let mut recent = self.recent_images.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|(weak, _)| weak.strong_count() > 0);
        if let Some((_, crops)) = recent
            .iter()
            .find(|(weak, _)| weak.upgrade().is_some_and(|a| Arc::ptr_eq(&a, image)))
        {
            return Ok(crops.clone());
        }
        drop(recent);
        let crops = Arc::new(
            self.processor
                .preprocess(image)
                .map_err(|e| ModelError::InvalidRequest(e.to_string()))?,
        );
        let p = self.config.vision.patch_size;
        if let Some(small) = crops
            .iter()
            .find(|c| patch_grid(c, p).0 == 0 || patch_grid(c, p).1 == 0)
        {
            let error = ImageError::SmallerThanPatch {
                width: image.width(),
                height: image.height(),
                crop_width: small.width,
                crop_height: small.height,
                patch: p,
            };
            return Err(ModelError::InvalidRequest(error.to_string()));
        }
        let mut recent = self.recent_images.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_IMAGES {
            recent.remove(0);
        }
        recent.push((Arc::downgrade(image), crops.clone()));
        Ok(crops)
    }

    /// Greedy generation that can also return each request's first-step raw logits.
    pub fn generate_detailed(
        &self,
        batch: &[&Idefics2Request],
        keep_first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        // One encoding per distinct page (same Arc) in the batch.
        let mut encoded: Vec<(Arc<RgbImage>, Tensor)> = Vec::new();
        let mut per_request: Vec<Option<Tensor>> = Vec::with_capacity(batch.len());
        for request in batch {
            let mut features = Vec::with_capacity(request.images.len());
            for image in &request.images {
                let cached = encoded
                    .iter()
                    .find(|(src, _)| Arc::ptr_eq(src, &image.source));
                let f = match cached {
                    Some((_, f)) => f.clone(),
                    None => {
                        let f = self.image_features(&image.crops).map_err(model_error)?;
                        encoded.push((image.source.clone(), f.clone()));
                        f
                    }
                };
                features.push(f);
            }
            per_request.push(if features.is_empty() {
                None
            } else {
                Some(Tensor::cat(&features, 0).map_err(model_error)?)
            });
        }
        let inputs: Vec<SequenceInput<'_>> = batch
            .iter()
            .zip(per_request)
            .map(|(r, image_features)| SequenceInput {
                input_ids: &r.input_ids,
                image_features,
                image_ids: r
                    .images
                    .iter()
                    .map(|i| Arc::as_ptr(&i.source) as usize)
                    .collect(),
                max_new_tokens: r.max_new_tokens,
            })
            .collect();
        let outputs = generate(
            &self.text,
            &inputs,
            &self.generation,
            self.config.image_token_id,
            keep_first_logits,
        )
        .map_err(model_error)?;
        batch
            .iter()
            .zip(outputs)
            .map(
                |(
                    request,
                    SequenceOutput {
                        token_ids,
                        finish_reason,
                        first_logits,
                    },
                )| {
                    let text = self
                        .prompt
                        .decode(&token_ids)
                        .map_err(|e| ModelError::Device(e.to_string()))?;
                    Ok(DetailedGeneration {
                        generation: Generation {
                            text,
                            token_ids,
                            finish_reason,
                            prompt_tokens: request.input_ids.len(),
                        },
                        first_logits,
                    })
                },
            )
            .collect()
    }
}

impl VisionLanguageModel for Idefics2Model {
    type Prepared = Idefics2Request;

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn prepare(&self, request: &ChatRequest) -> Result<Idefics2Request, ModelError> {
        let prompt = self
            .prompt
            .build(&request.messages, request.images.len())
            .map_err(|e| ModelError::InvalidRequest(e.to_string()))?;
        let images = request
            .images
            .iter()
            .map(|source| {
                Ok(PreparedImage {
                    source: source.clone(),
                    crops: self.preprocess_shared(source)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let image_tokens = prompt
            .input_ids
            .iter()
            .filter(|&&id| id == self.config.image_token_id)
            .count();
        let crops: usize = images.iter().map(|i| i.crops.len()).sum();
        let expected = crops * self.processor.config().image_seq_len;
        if image_tokens != expected {
            return Err(ModelError::InvalidRequest(format!(
                "the prompt has {image_tokens} image tokens but its {} images need {expected}",
                images.len()
            )));
        }
        Ok(Idefics2Request {
            input_ids: prompt.input_ids,
            images,
            max_new_tokens: request.max_new_tokens,
        })
    }

    fn cost(&self, prepared: &Idefics2Request) -> RequestCost {
        let p = self.config.vision.patch_size;
        RequestCost {
            prompt_tokens: prepared.input_ids.len(),
            max_new_tokens: prepared.max_new_tokens,
            image_patches: prepared
                .images
                .iter()
                .flat_map(|i| i.crops.iter())
                .map(|c| {
                    let (h, w) = patch_grid(c, p);
                    h * w
                })
                .sum(),
        }
    }

    fn generate(&self, batch: &[&Idefics2Request]) -> Result<Vec<Generation>, ModelError> {
        Ok(self
            .generate_detailed(batch, false)?
            .into_iter()
            .map(|d| d.generation)
            .collect())
    }
}
