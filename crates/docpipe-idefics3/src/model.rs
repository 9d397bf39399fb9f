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

use crate::config::{Idefics3Config, ProcessorConfig};
use crate::connector::Connector;
use crate::processor::ImageProcessor;
use crate::prompt::PromptBuilder;

/// A request ready for Idefics3 generation.
pub type Idefics3Request = PreparedRequest;

/// An Idefics3 checkpoint loaded on one device.
pub struct Idefics3Model {
    model_id: String,
    config: Idefics3Config,
    generation: GenerationConfig,
    processor: ImageProcessor,
    prompt: PromptBuilder,
    vision: VisionTower,
    connector: Connector,
    text: TextModel,
    recent_images: RecentImages,
}

impl std::fmt::Debug for Idefics3Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idefics3Model")
            .field("model_id", &self.model_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Idefics3Model {
    /// Loads a checkpoint directory in the hub or the transformers 5 layout.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, LoadError> {
        let file = ConfigFile::read(dir)?;
        let config = Idefics3Config::from_value(&file.json, &file.path)?;
        let generation = GenerationConfig::load(&dir.join("generation_config.json"), &file.json)?;
        let processor = ImageProcessor::new(ProcessorConfig::load(dir)?);
        let image_seq_len = processor.config().image_seq_len;
        let tile = processor.tile();
        let patch = config.vision.patch_size;
        let side = tile / patch;
        if tile % patch != 0 || tile > config.vision.image_size || side % config.scale_factor != 0 {
            return Err(LoadError::invalid(
                dir.join("processor_config.json"),
                format!(
                    "max_image_size {tile} must be a multiple of patch_size {patch}, at most image_size {}, in a whole number of {} x {} pixel-shuffle windows",
                    config.vision.image_size, config.scale_factor, config.scale_factor
                ),
            ));
        }
        let prompt = PromptBuilder::load(dir, image_seq_len, config.image_token_id)?;
        let weights = Weights::load(dir, dtype, device)?;
        let model = weights.pp("model");
        let vision = VisionTower::new(&config.vision, &model.pp("vision_model"))?;
        let connector = Connector::new(&config, &model.pp("connector"))?;
        if connector.tokens_per_tile(side) != image_seq_len {
            return Err(LoadError::invalid(
                dir.join("processor_config.json"),
                format!(
                    "image_seq_len {image_seq_len} differs from the {} features of a {tile}-pixel tile",
                    connector.tokens_per_tile(side)
                ),
            ));
        }
        let text = TextModel::new(
            &config.text,
            &model.pp("text_model"),
            &weights.pp("lm_head"),
        )?;
        Ok(Idefics3Model {
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
    pub fn config(&self) -> &Idefics3Config {
        &self.config
    }

    /// Its eos ids.
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

    /// Vision tower output (after the post layer norm) for one tile.
    pub fn vision_hidden(&self, tile: &ProcessedImage) -> candle_core::Result<Tensor> {
        Ok(self.vision.forward(std::slice::from_ref(tile))?.0)
    }

    /// Connector output for one input image's tiles: `(tiles · image_seq_len, text hidden)`.
    /// The tiles go through the towers together, attention per tile.
    pub fn image_features(&self, tiles: &[ProcessedImage]) -> candle_core::Result<Tensor> {
        let (patches, _) = self.vision.forward(tiles)?;
        let side = self.processor.tile() / self.config.vision.patch_size;
        self.connector.forward(&patches, side)
    }

    /// Greedy generation that can also return each request's first-step raw logits.
    pub fn generate_detailed(
        &self,
        batch: &[&Idefics3Request],
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
            |tiles| self.image_features(tiles),
            |ids| self.prompt.decode(ids),
        )
    }
}

impl VisionLanguageModel for Idefics3Model {
    type Prepared = Idefics3Request;

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn image_longest_edge(&self) -> u32 {
        self.processor.config().size.longest_edge as u32
    }

    fn prepare(&self, request: &ChatRequest) -> Result<Idefics3Request, ModelError> {
        let invalid = |e: &dyn std::fmt::Display| ModelError::InvalidRequest(e.to_string());
        let layouts: Vec<_> = request
            .images
            .iter()
            .map(|i| {
                self.processor
                    .layout(i.height() as usize, i.width() as usize)
            })
            .collect();
        let prompt = self
            .prompt
            .build(&request.messages, &layouts)
            .map_err(|e| invalid(&e))?;
        let patch = self.config.vision.patch_size;
        let images = request
            .images
            .iter()
            .map(|source| {
                let crops = self.recent_images.get_or_insert(source, |image| {
                    let tiles = self.processor.preprocess(image).map_err(|e| invalid(&e))?;
                    check_patches(image, &tiles, patch)?;
                    Ok(tiles)
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

    fn cost(&self, prepared: &Idefics3Request) -> RequestCost {
        request_cost(prepared, self.config.vision.patch_size)
    }

    fn generate(&self, batch: &[&Idefics3Request]) -> Result<Vec<Generation>, ModelError> {
        Ok(self
            .generate_detailed(batch, false)?
            .into_iter()
            .map(|d| d.generation)
            .collect())
    }
}
