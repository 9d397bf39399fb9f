//! The assembled model: `docpipe_vlm::model::IdeficsModel` over what is Idefics3's own
//! ([`Idefics3`]): the pixel-shuffle connector, tiling and the `<row_r_col_c>` expansion, and
//! the checks that a tile is a whole number of pixel-shuffle windows giving `image_seq_len`
//! features.

use std::path::Path;

use candle_core::Tensor;
use docpipe_core::ChatRequest;
use docpipe_vlm::chat::Prompt;
use docpipe_vlm::image::ProcessedImage;
use docpipe_vlm::model::{Family, IdeficsModel};
use docpipe_vlm::request::PreparedRequest;
use docpipe_vlm::weights::Weights;
use docpipe_vlm::{ImageError, LoadError, PromptError};
use image::RgbImage;

use crate::config::{Idefics3Config, PixelShuffleConfig, ProcessorConfig};
use crate::connector::Connector;
use crate::processor::ImageProcessor;
use crate::prompt::PromptBuilder;

/// A request ready for Idefics3 generation.
pub type Idefics3Request = PreparedRequest;

/// An Idefics3 checkpoint loaded on one device (hub or transformers 5 layout).
pub type Idefics3Model = IdeficsModel<Idefics3>;

/// The Idefics3 family's parts of the assembled model.
#[derive(Debug, Clone, Copy)]
pub enum Idefics3 {}

impl Family for Idefics3 {
    const MODEL_NAME: &'static str = "Idefics3Model";
    type Config = PixelShuffleConfig;
    type Processor = ImageProcessor;
    type Prompt = PromptBuilder;
    type Connector = Connector;

    fn load_processor(dir: &Path) -> Result<ImageProcessor, LoadError> {
        Ok(ImageProcessor::new(ProcessorConfig::load(dir)?))
    }

    fn load_prompt(
        dir: &Path,
        config: &Idefics3Config,
        processor: &ImageProcessor,
    ) -> Result<PromptBuilder, LoadError> {
        let tile = processor.tile();
        let patch = config.vision.patch_size;
        let side = tile / patch;
        if !tile.is_multiple_of(patch)
            || tile > config.vision.image_size
            || !side.is_multiple_of(config.family.scale_factor)
        {
            return Err(LoadError::invalid(
                dir.join("processor_config.json"),
                format!(
                    "max_image_size {tile} must be a multiple of patch_size {patch}, at most image_size {}, in a whole number of {} x {} pixel-shuffle windows",
                    config.vision.image_size, config.family.scale_factor, config.family.scale_factor
                ),
            ));
        }
        PromptBuilder::load(dir, processor.config().image_seq_len, config.image_token_id)
    }

    fn load_connector(
        dir: &Path,
        config: &Idefics3Config,
        processor: &ImageProcessor,
        weights: &Weights,
    ) -> Result<Connector, LoadError> {
        let connector = Connector::new(config, weights)?;
        let (tile, image_seq_len) = (processor.tile(), processor.config().image_seq_len);
        let per_tile = connector.tokens_per_tile(tile / config.vision.patch_size);
        if per_tile != image_seq_len {
            return Err(LoadError::invalid(
                dir.join("processor_config.json"),
                format!(
                    "image_seq_len {image_seq_len} differs from the {per_tile} features of a {tile}-pixel tile"
                ),
            ));
        }
        Ok(connector)
    }

    fn image_seq_len(processor: &ImageProcessor) -> usize {
        processor.config().image_seq_len
    }

    fn image_longest_edge(processor: &ImageProcessor) -> usize {
        processor.config().size.longest_edge
    }

    fn preprocess(
        processor: &ImageProcessor,
        image: &RgbImage,
    ) -> Result<Vec<ProcessedImage>, ImageError> {
        processor.preprocess(image)
    }

    /// Each image's block depends on its tile grid, a function of its size alone.
    fn build_prompt(
        prompt: &PromptBuilder,
        processor: &ImageProcessor,
        request: &ChatRequest,
    ) -> Result<Prompt, PromptError> {
        let layouts: Vec<_> = request
            .images
            .iter()
            .map(|i| processor.layout(i.height() as usize, i.width() as usize))
            .collect();
        prompt.build(&request.messages, &layouts)
    }

    fn decode(prompt: &PromptBuilder, ids: &[u32]) -> Result<String, PromptError> {
        prompt.decode(ids)
    }

    /// Tiles are always whole, so the patch counts are not needed: every tile is
    /// `tile / patch_size` patches a side.
    fn connect(
        connector: &Connector,
        config: &Idefics3Config,
        processor: &ImageProcessor,
        patches: &Tensor,
        _lens: &[usize],
    ) -> candle_core::Result<Tensor> {
        connector.forward(patches, processor.tile() / config.vision.patch_size)
    }
}
