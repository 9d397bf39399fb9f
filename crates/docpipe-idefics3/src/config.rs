//! Idefics3 checkpoint settings: `config.json` (SigLIP tower, Llama decoder, pixel-shuffle
//! factor) and the image-processor files, deserialized with serde over transformers' class
//! defaults (`Idefics3Config`, `Idefics3VisionConfig`, `LlamaConfig`, `Idefics3ImageProcessor`,
//! `Idefics3Processor`), each declared once below. Both the 2024 hub layout and transformers
//! 5's `save_pretrained` layout load (see `docpipe_vlm::config`).

use std::path::Path;

use docpipe_vlm::config::{
    first_failure, layered, processor_config, FamilyConfig, IdeficsConfig, Normalization, Resample,
    TextConfig, VisionConfig,
};
use docpipe_vlm::LoadError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The `config.json` `model_type` of the checkpoints this crate runs.
pub const MODEL_TYPE: &str = "idefics3";

/// `Idefics3ImageProcessor` (PIL) and `Idefics3Processor` defaults.
fn processor_defaults() -> Value {
    json!({
        "do_convert_rgb": true, "do_resize": true, "size": { "longest_edge": 4 * 364 },
        "max_image_size": { "longest_edge": 364 }, "resample": 1, "do_rescale": true,
        "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_image_splitting": true, "image_seq_len": 169,
    })
}

/// Idefics3's own top-level setting of `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PixelShuffleConfig {
    /// Side of the pixel-shuffle window (spec G.4).
    pub scale_factor: usize,
}

/// The whole `config.json`; its family part is the pixel-shuffle factor.
pub type Idefics3Config = IdeficsConfig<PixelShuffleConfig>;

impl FamilyConfig for PixelShuffleConfig {
    const MODEL_TYPE: &'static str = MODEL_TYPE;
    /// `Idefics3Config`'s default.
    const IMAGE_TOKEN_ID: u32 = 128257;

    /// `Idefics3VisionConfig`'s defaults.
    fn vision_defaults() -> Value {
        json!({
            "hidden_size": 1152, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 16, "num_channels": 3, "image_size": 224, "patch_size": 32,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
        })
    }

    /// `LlamaConfig`'s defaults (no sliding window; kv heads default to the query heads).
    fn text_defaults() -> Value {
        json!({
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        })
    }

    /// `Idefics3Config`'s default factor is 2.
    fn read(root: &Value, _text: &TextConfig, path: &Path) -> Result<Self, LoadError> {
        layered(json!({ "scale_factor": 2 }), &[(root, path)])
    }

    fn check(&self, vision: &VisionConfig) -> (bool, &'static str) {
        (
            self.scale_factor > 0
                && vision
                    .num_patches_per_side()
                    .is_multiple_of(self.scale_factor),
            "vision_config.image_size / patch_size must be a multiple of scale_factor",
        )
    }
}

/// A `{"longest_edge": n}` size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct LongestEdge {
    /// The longest side, in pixels.
    pub longest_edge: usize,
}

/// `Idefics3ImageProcessor` settings plus the processor's `image_seq_len`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProcessorConfig {
    /// Convert to RGB (always done: the model takes 3 channels).
    pub do_convert_rgb: bool,
    /// Resize the longest side to `size` first (spec G.2 step 1).
    pub do_resize: bool,
    /// The image's longest side after step 1 (1456 on the 8B).
    pub size: LongestEdge,
    /// The tile side (364 on the 8B).
    pub max_image_size: LongestEdge,
    /// The resampling filter (LANCZOS).
    pub resample: Resample,
    /// Rescale and normalize.
    #[serde(flatten)]
    pub normalization: Normalization,
    /// Tiles plus a global image; off, the global image only.
    pub do_image_splitting: bool,
    /// `<image>` tokens per tile.
    pub image_seq_len: usize,
}

impl ProcessorConfig {
    /// Reads the image-processor files of the checkpoint in `dir` over the class defaults.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let config: ProcessorConfig = processor_config(dir, processor_defaults())?;
        first_failure(
            &[(
                config.max_image_size.longest_edge > 0 && config.size.longest_edge > 0,
                "size and max_image_size must be positive",
            )],
            &dir.join("processor_config.json"),
        )?;
        Ok(config)
    }
}
