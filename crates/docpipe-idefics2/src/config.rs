//! Idefics2 checkpoint settings: `config.json` (vision tower, perceiver, Mistral decoder) and
//! the image-processor files, deserialized with serde over transformers' class defaults
//! (`Idefics2Config`, `Idefics2VisionConfig`, `Idefics2PerceiverConfig`, `MistralConfig`,
//! `Idefics2ImageProcessor`, `Idefics2Processor`), each declared once below.

use std::path::Path;

use docpipe_vlm::config::{
    processor_config, section, Activation, FamilyConfig, IdeficsConfig, Normalization, Resample,
    TextConfig, VisionConfig,
};
use docpipe_vlm::LoadError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The `config.json` `model_type` of the checkpoints this crate runs.
pub const MODEL_TYPE: &str = "idefics2";

/// `Idefics2PerceiverConfig`'s defaults (its eps is resolved against the text model's).
fn perceiver_defaults() -> Value {
    json!({
        "hidden_size": 4096, "resampler_n_latents": 64, "resampler_depth": 3,
        "resampler_n_heads": 16, "resampler_head_dim": 96, "num_key_value_heads": 4,
        "hidden_act": "silu",
    })
}

/// `Idefics2ImageProcessor` and `Idefics2Processor` defaults.
fn processor_defaults() -> Value {
    json!({
        "do_convert_rgb": true, "do_resize": true,
        "size": { "shortest_edge": 378, "longest_edge": 980 },
        "resample": 2, "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_image_splitting": false, "image_seq_len": 64,
    })
}

/// `perceiver_config` as written.
#[derive(Debug, Clone, Deserialize)]
struct PerceiverFile {
    hidden_size: usize,
    resampler_n_latents: usize,
    resampler_depth: usize,
    resampler_n_heads: usize,
    resampler_head_dim: usize,
    num_key_value_heads: usize,
    hidden_act: Activation,
    rms_norm_eps: Option<f64>,
}

/// Perceiver resampler settings (`perceiver_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerceiverConfig {
    /// Always the text width (transformers forces it).
    pub hidden_size: usize,
    /// Output tokens per image.
    pub n_latents: usize,
    /// Layers.
    pub depth: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// MLP nonlinearity.
    pub hidden_act: Activation,
    /// RMSNorm epsilon (see the crate docs).
    pub rms_norm_eps: f64,
}

impl PerceiverConfig {
    /// transformers forces the perceiver width to the text width and then also takes the text
    /// eps; an absent eps falls back to the text eps too (see the crate docs).
    fn resolve(file: PerceiverFile, text: &TextConfig) -> Self {
        let rms_norm_eps = match file.rms_norm_eps {
            Some(eps) if file.hidden_size == text.hidden_size => eps,
            _ => text.rms_norm_eps,
        };
        PerceiverConfig {
            hidden_size: text.hidden_size,
            n_latents: file.resampler_n_latents,
            depth: file.resampler_depth,
            n_heads: file.resampler_n_heads,
            head_dim: file.resampler_head_dim,
            num_key_value_heads: file.num_key_value_heads,
            hidden_act: file.hidden_act,
            rms_norm_eps,
        }
    }
}

/// The whole `config.json`; its family part is the perceiver resampler.
pub type Idefics2Config = IdeficsConfig<PerceiverConfig>;

impl FamilyConfig for PerceiverConfig {
    const MODEL_TYPE: &'static str = MODEL_TYPE;
    /// `Idefics2Config`'s default.
    const IMAGE_TOKEN_ID: u32 = 32001;

    /// `Idefics2VisionConfig`'s defaults.
    fn vision_defaults() -> Value {
        json!({
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
        })
    }

    /// `MistralConfig`'s defaults, except the sliding window: idefics2-8b's hub config sets it to
    /// null, and a config without one is read as having none.
    fn text_defaults() -> Value {
        json!({
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": false,
        })
    }

    fn read(root: &Value, text: &TextConfig, path: &Path) -> Result<Self, LoadError> {
        let file: PerceiverFile = section(root, "perceiver_config", perceiver_defaults(), path)?;
        Ok(PerceiverConfig::resolve(file, text))
    }

    fn check(&self, _vision: &VisionConfig) -> (bool, &'static str) {
        (
            self.num_key_value_heads > 0 && self.n_heads.is_multiple_of(self.num_key_value_heads),
            "perceiver_config.resampler_n_heads must be a multiple of num_key_value_heads",
        )
    }
}

/// The resize bounds of `Idefics2ImageProcessor` (`size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Size {
    /// Sides below are stretched to it.
    pub shortest_edge: usize,
    /// Images with a longer side shrink to it.
    pub longest_edge: usize,
}

/// `Idefics2ImageProcessor` settings plus the processor's `image_seq_len`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProcessorConfig {
    /// Convert to RGB (always done: the model takes 3 channels).
    pub do_convert_rgb: bool,
    /// Apply the resize rule.
    pub do_resize: bool,
    /// The resize bounds.
    pub size: Size,
    /// The resampling filter.
    pub resample: Resample,
    /// Rescale and normalize.
    #[serde(flatten)]
    pub normalization: Normalization,
    /// Four quadrants plus the whole image.
    pub do_image_splitting: bool,
    /// `<image>` tokens per crop (the perceiver's latents).
    pub image_seq_len: usize,
}

impl ProcessorConfig {
    /// Reads the image-processor files of the checkpoint in `dir` over the class defaults.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        processor_config(dir, processor_defaults())
    }
}
