//! The assembled model of either family: one [`IdeficsModel`] does the loading, request
//! preparation, generation and the `docpipe_core::VisionLanguageModel` implementation, and a
//! family crate supplies only what is its own through [`Family`] (config, image processor,
//! prompt expansion, connector and the load-time checks between them). Both families run the
//! same pipeline around those parts: SigLIP tower, connector, decoder with image features in
//! place of image tokens, so a fix to that pipeline reaches both.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use docpipe_core::{
    ChatRequest, Generation, GenerationSession, ModelError, RequestCost, VisionLanguageModel,
};
use image::RgbImage;

use crate::chat::Prompt;
use crate::config::{ConfigFile, FamilyConfig, GenerationConfig, IdeficsConfig};
use crate::error::{ImageError, LoadError, PromptError};
use crate::image::ProcessedImage;
use crate::placement::Placement;
use crate::request::{
    check_image_tokens, check_patches, request_cost, DetailedGeneration, Generator, PreparedImage,
    PreparedRequest, RecentImages,
};
use crate::session::IdeficsSession;
use crate::text::TextModel;
use crate::vision::VisionTower;
use crate::weights::Weights;

/// What a model family contributes to [`IdeficsModel`]: its component types, how to load them
/// and the few steps where the families differ. Implemented by a marker type per family crate.
pub trait Family {
    /// The name `Debug` shows for the assembled model (`"Idefics2Model"`).
    const MODEL_NAME: &'static str;
    /// The family's own part of `config.json`.
    type Config: FamilyConfig + std::fmt::Debug + Send + Sync;
    /// Its image processor.
    type Processor: Send + Sync;
    /// Its prompt builder.
    type Prompt: Send + Sync;
    /// Its connector from vision width to text width.
    type Connector: Send + Sync;

    /// The image processor of the checkpoint in `dir`.
    fn load_processor(dir: &Path) -> Result<Self::Processor, LoadError>;
    /// The prompt builder, and the checks that the processor's settings fit `config` (they
    /// need no weights, so they fail before the weights are mapped).
    fn load_prompt(
        dir: &Path,
        config: &IdeficsConfig<Self::Config>,
        processor: &Self::Processor,
    ) -> Result<Self::Prompt, LoadError>;
    /// The connector from the view of `model.connector`, checked against the processor.
    fn load_connector(
        dir: &Path,
        config: &IdeficsConfig<Self::Config>,
        processor: &Self::Processor,
        weights: &Weights,
    ) -> Result<Self::Connector, LoadError>;

    /// `<image>` tokens per crop or tile.
    fn image_seq_len(processor: &Self::Processor) -> usize;
    /// The longest image side the processor keeps (what the pipeline renders pages at).
    fn image_longest_edge(processor: &Self::Processor) -> usize;
    /// One input image's crops or tiles, in the order of its prompt block.
    fn preprocess(
        processor: &Self::Processor,
        image: &RgbImage,
    ) -> Result<Vec<ProcessedImage>, ImageError>;
    /// The request's prompt, rendered, image markers expanded and tokenized.
    fn build_prompt(
        prompt: &Self::Prompt,
        processor: &Self::Processor,
        request: &ChatRequest,
    ) -> Result<Prompt, PromptError>;
    /// Generated ids as text.
    fn decode(prompt: &Self::Prompt, ids: &[u32]) -> Result<String, PromptError>;
    /// Image features `(crops · image_seq_len, text hidden)` of one input image's crops from
    /// the tower's packed valid patches `(Σ P, vision hidden)`, `lens` patches per crop.
    fn connect(
        connector: &Self::Connector,
        config: &IdeficsConfig<Self::Config>,
        processor: &Self::Processor,
        patches: &Tensor,
        lens: &[usize],
    ) -> candle_core::Result<Tensor>;
}

/// A checkpoint of family `F` loaded on one device.
pub struct IdeficsModel<F: Family> {
    model_id: String,
    config: IdeficsConfig<F::Config>,
    generation: GenerationConfig,
    processor: F::Processor,
    prompt: F::Prompt,
    vision: VisionTower,
    connector: F::Connector,
    text: TextModel,
    recent_images: RecentImages,
}

impl<F: Family> std::fmt::Debug for IdeficsModel<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(F::MODEL_NAME)
            .field("model_id", &self.model_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F: Family> IdeficsModel<F> {
    /// Loads a checkpoint directory (the layouts the family's config reads) onto the devices of
    /// `placement`: towers and connector on the first, the decoder split over all of them.
    pub fn load(dir: &Path, placement: &Placement, dtype: DType) -> Result<Self, LoadError> {
        let file = ConfigFile::read(dir)?;
        let config = IdeficsConfig::<F::Config>::from_value(&file.json, &file.path)?;
        let generation = GenerationConfig::load(&dir.join("generation_config.json"), &file.json)?;
        let processor = F::load_processor(dir)?;
        let prompt = F::load_prompt(dir, &config, &processor)?;
        let weights = Weights::load(dir, dtype, placement.first())?;
        let model = weights.pp("model");
        let vision = VisionTower::new(&config.vision, &model.pp("vision_model"))?;
        let connector = F::load_connector(dir, &config, &processor, &model.pp("connector"))?;
        let text = TextModel::new(
            &config.text,
            &model.pp("text_model"),
            &weights.pp("lm_head"),
            placement,
        )?;
        Ok(IdeficsModel {
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

    /// The same model under another `model_id`: a checkpoint fetched from the hub or a bucket is
    /// named by its origin (`org/name@<commit>`), not by the cache folder it was loaded from.
    pub fn with_model_id(mut self, model_id: String) -> Self {
        self.model_id = model_id;
        self
    }

    /// Its `config.json`.
    pub fn config(&self) -> &IdeficsConfig<F::Config> {
        &self.config
    }

    /// Its eos ids and bans.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Its image processor.
    pub fn processor(&self) -> &F::Processor {
        &self.processor
    }

    /// Its prompt builder.
    pub fn prompt(&self) -> &F::Prompt {
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
        F::connect(
            &self.connector,
            &self.config,
            &self.processor,
            &patches,
            &lens,
        )
    }

    /// Greedy generation that can also return each request's first-step raw logits.
    pub fn generate_detailed(
        &self,
        batch: &[&PreparedRequest],
        keep_first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        self.generator().run(
            batch,
            keep_first_logits,
            |crops| self.image_features(crops),
            |ids| F::decode(&self.prompt, ids),
        )
    }

    /// An empty running batch for continuous batching; `keep_first_logits` as in
    /// [`IdeficsModel::generate_detailed`], whose results its requests get.
    pub fn session(&self, keep_first_logits: bool) -> IdeficsSession<'_, F> {
        IdeficsSession::new(self, self.generator().decoder(keep_first_logits))
    }

    fn generator(&self) -> Generator<'_> {
        Generator {
            text: &self.text,
            config: &self.generation,
            image_token_id: self.config.image_token_id,
        }
    }
}

impl<F: Family> VisionLanguageModel for IdeficsModel<F> {
    type Prepared = PreparedRequest;

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn image_longest_edge(&self) -> u32 {
        F::image_longest_edge(&self.processor) as u32
    }

    fn prepare(&self, request: &ChatRequest) -> Result<PreparedRequest, ModelError> {
        let invalid = |e: &dyn std::fmt::Display| ModelError::InvalidRequest(e.to_string());
        let prompt =
            F::build_prompt(&self.prompt, &self.processor, request).map_err(|e| invalid(&e))?;
        let patch = self.config.vision.patch_size;
        let images = request
            .images
            .iter()
            .map(|source| {
                let crops = self.recent_images.get_or_insert(source, |image| {
                    let crops = F::preprocess(&self.processor, image).map_err(|e| invalid(&e))?;
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
            F::image_seq_len(&self.processor),
        )?;
        Ok(prepared)
    }

    fn cost(&self, prepared: &PreparedRequest) -> RequestCost {
        request_cost(prepared, self.config.vision.patch_size)
    }

    fn generate(&self, batch: &[&PreparedRequest]) -> Result<Vec<Generation>, ModelError> {
        Ok(self
            .generate_detailed(batch, false)?
            .into_iter()
            .map(|d| d.generation)
            .collect())
    }

    fn start_session(&self) -> Option<Box<dyn GenerationSession<PreparedRequest> + '_>> {
        Some(Box::new(self.session(false)))
    }
}
