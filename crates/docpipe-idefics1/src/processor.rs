//! What `IdeficsImageProcessor` does to an image: squash it to a fixed square (224 × 224 for
//! every released checkpoint) with Pillow's bicubic filter, then rescale and normalize with
//! CLIP's mean and std. The resize is docpipe-vlm's port of Pillow's resampler, so the pixels
//! are those of transformers' PIL backend.

use std::path::Path;

use docpipe_vlm::config::{processor_config, Normalization, Resample};
use docpipe_vlm::image::{Normalizer, ProcessedImage};
use docpipe_vlm::resample::resize;
use docpipe_vlm::LoadError;
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};

/// `IdeficsImageProcessor`'s defaults.
fn defaults() -> Value {
    json!({
        "do_resize": true, "size": {"height": 224, "width": 224}, "resample": 3,
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
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

/// The files as written: the hub's give `image_size`, transformers 5 writes `size` too.
#[derive(Deserialize)]
struct ConfigFile {
    do_resize: bool,
    size: Size,
    image_size: Option<u32>,
    resample: Resample,
    #[serde(flatten)]
    normalization: Normalization,
}

/// The image-processor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// The size every image is squashed to (`image_size` × `image_size` when the file has it,
    /// as the processor's constructor overrides `size` with it).
    pub size: Size,
    /// The PIL filter.
    pub resample: Resample,
    /// Rescale and normalization.
    pub normalization: Normalization,
}

impl ProcessorConfig {
    /// Reads the checkpoint's image-processor files (`preprocessor_config.json` and / or
    /// transformers 5's `processor_config.json`).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let file: ConfigFile = processor_config(dir, defaults())?;
        let path = dir.join("preprocessor_config.json");
        if !file.do_resize {
            return Err(LoadError::invalid(
                path,
                "do_resize is off: the vision tower needs images of its configured size",
            ));
        }
        let size = file.image_size.map_or(file.size, |side| Size {
            height: side,
            width: side,
        });
        if size.height == 0 || size.width == 0 {
            return Err(LoadError::invalid(path, "the image size must not be 0"));
        }
        Ok(ProcessorConfig {
            size,
            resample: file.resample,
            normalization: file.normalization,
        })
    }
}

/// Resizes and normalizes images for the vision tower.
#[derive(Debug, Clone)]
pub struct Processor {
    /// Its settings.
    pub config: ProcessorConfig,
    normalizer: Normalizer,
}

impl Processor {
    /// The processor of the checkpoint in `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let config = ProcessorConfig::load(dir)?;
        Ok(Processor {
            normalizer: Normalizer::new(&config.normalization),
            config,
        })
    }

    /// The image resized with Pillow's filter, as `uint8` levels.
    pub fn resize(&self, image: &RgbImage) -> RgbImage {
        let Size { height, width } = self.config.size;
        if image.dimensions() == (width, height) {
            return image.clone();
        }
        resize(image, width, height, self.config.resample)
    }

    /// The normalized channel-first pixels of an image.
    pub fn preprocess(&self, image: &RgbImage) -> ProcessedImage {
        self.normalizer.apply(&self.resize(image))
    }
}
