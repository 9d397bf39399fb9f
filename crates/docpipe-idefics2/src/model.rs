//! The assembled model: checkpoint loading, request preparation and the
//! `docpipe_core::VisionLanguageModel` implementation the pipeline uses.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use docpipe_core::{ChatRequest, Generation, ModelError, RequestCost, VisionLanguageModel};
use docpipe_vlm::config::{ConfigFile, GenerationConfig};
use docpipe_vlm::image::ProcessedImage;
use docpipe_vlm::request::{
    check_image_tokens, check_patches, request_cost, DetailedGeneration, Generator, PreparedImage,
    PreparedRequest, RecentImages,
};
use docpipe_vlm::text::TextModel;
use docpipe_vlm::vision::VisionTower;
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::{Idefics2Config, ProcessorConfig};
use crate::connector::Connector;
use crate::processor::ImageProcessor;
use crate::prompt::PromptBuilder;

/// A request ready for Idefics2 generation.
pub type Idefics2Request = PreparedRequest;

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
    recent_images: RecentImages,
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
        let file = ConfigFile::read(dir)?;
        let config = Idefics2Config::from_value(&file.json, &file.path)?;
        let generation = GenerationConfig::load(&dir.join("generation_config.json"), &file.json)?;
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
        let model = weights.pp("model");
        let vision = VisionTower::new(&config.vision, &model.pp("vision_model"))?;
        let connector = Connector::new(&config, &model.pp("connector"))?;
        let text = TextModel::new(
            &config.text,
            &model.pp("text_model"),
            &weights.pp("lm_head"),
        )?;
        Ok(Idefics2Model {
            model_id: weights.model_id(dir, &file.bytes),
            config,
            generation,
            processor,
            prompt,
            vision,
            connector,
            text,
            recent_images: RecentImages::default(),
        })
    }

    /// Its `config.json`.
    pub fn config(&self) -> &Idefics2Config {
        &self.config
    }

    /// Its eos ids and bans.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Its image processor.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// Its prompt builder.
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

    /// Greedy generation that can also return each request's first-step raw logits.
    pub fn generate_detailed(
        &self,
        batch: &[&Idefics2Request],
        keep_first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        Generator {
            text: &self.text,
            config: &self.generation,
            image_token_id: self.config.image_token_id,
        }
        .run(
            batch,
            keep_first_logits,
            |crops| self.image_features(crops),
            |ids| self.prompt.decode(ids),
        )
    }
}

impl VisionLanguageModel for Idefics2Model {
    type Prepared = Idefics2Request;

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn image_longest_edge(&self) -> u32 {
        self.processor.config().size.longest_edge as u32
    }

    fn prepare(&self, request: &ChatRequest) -> Result<Idefics2Request, ModelError> {
        let prompt = self
            .prompt
            .build(&request.messages, request.images.len())
            .map_err(|e| ModelError::InvalidRequest(e.to_string()))?;
        let patch = self.config.vision.patch_size;
        let images = request
            .images
            .iter()
            .map(|source| {
                let crops = self.recent_images.get_or_insert(source, |image| {
                    let crops = self
                        .processor
                        .preprocess(image)
                        .map_err(|e| ModelError::InvalidRequest(e.to_string()))?;
                    check_patches(image, &crops, patch)?;
                    Ok(crops)
                })?;
                Ok(PreparedImage {
                    source: Arc::clone(source),
                    crops,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let prepared = PreparedRequest {
            input_ids: prompt.input_ids,
            images,
            max_new_tokens: request.max_new_tokens,
        };
        check_image_tokens(
            &prepared,
            self.config.image_token_id,
            self.processor.config().image_seq_len,
        )?;
        Ok(prepared)
    }

    fn cost(&self, prepared: &Idefics2Request) -> RequestCost {
        request_cost(prepared, self.config.vision.patch_size)
    }

    fn generate(&self, batch: &[&Idefics2Request]) -> Result<Vec<Generation>, ModelError> {
        Ok(self
            .generate_detailed(batch, false)?
            .into_iter()
            .map(|d| d.generation)
            .collect())
    }
}
