//! The assembled model: `docpipe_vlm::model::IdeficsModel` over what is Idefics2's own
//! ([`Idefics2`]): the perceiver connector, quadrant splitting and `<image>` expansion, and the
//! check that the processor's `image_seq_len` is the perceiver's latent count.

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

use crate::config::{Idefics2Config, PerceiverConfig, ProcessorConfig};
use crate::connector::Connector;
use crate::processor::ImageProcessor;
use crate::prompt::PromptBuilder;

/// A request ready for Idefics2 generation.
pub type Idefics2Request = PreparedRequest;

/// An Idefics2 checkpoint loaded on one device.
pub type Idefics2Model = IdeficsModel<Idefics2>;

/// The Idefics2 family's parts of the assembled model.
#[derive(Debug, Clone, Copy)]
pub enum Idefics2 {}

impl Family for Idefics2 {
    const MODEL_NAME: &'static str = "Idefics2Model";
    type Config = PerceiverConfig;
    type Processor = ImageProcessor;
    type Prompt = PromptBuilder;
    type Connector = Connector;

    fn load_processor(dir: &Path) -> Result<ImageProcessor, LoadError> {
        Ok(ImageProcessor::new(ProcessorConfig::load(dir)?))
    }

    fn load_prompt(
        dir: &Path,
        config: &Idefics2Config,
        processor: &ImageProcessor,
    ) -> Result<PromptBuilder, LoadError> {
        let prompt = PromptBuilder::load(
            dir,
            processor.config().image_seq_len,
            processor.images_per_input(),
            config.image_token_id,
        )?;
        if processor.config().image_seq_len != config.family.n_latents {
            return Err(LoadError::invalid(
                dir.join("processor_config.json"),
                format!(
                    "image_seq_len {} differs from the perceiver's {} latents",
                    processor.config().image_seq_len,
                    config.family.n_latents
                ),
            ));
        }
        Ok(prompt)
    }

    fn load_connector(
        _dir: &Path,
        config: &Idefics2Config,
        _processor: &ImageProcessor,
        weights: &Weights,
    ) -> Result<Connector, LoadError> {
        Connector::new(config, weights)
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

    fn build_prompt(
        prompt: &PromptBuilder,
        _processor: &ImageProcessor,
        request: &ChatRequest,
    ) -> Result<Prompt, PromptError> {
        prompt.build(&request.messages, request.images.len())
    }

    fn decode(prompt: &PromptBuilder, ids: &[u32]) -> Result<String, PromptError> {
        prompt.decode(ids)
    }

    /// The perceiver resamples each crop's patches to its latents.
    fn connect(
        connector: &Connector,
        _config: &Idefics2Config,
        _processor: &ImageProcessor,
        patches: &Tensor,
        lens: &[usize],
    ) -> candle_core::Result<Tensor> {
        connector.forward(patches, lens)
    }
}
