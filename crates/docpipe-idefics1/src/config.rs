//! Idefics1 checkpoint settings, deserialized with serde over transformers' class defaults
//! (`IdeficsConfig`, `IdeficsVisionConfig`, `IdeficsPerceiverConfig`), each declared once below.
//!
//! The decoder's settings sit at the top level of `config.json`, beside `vision_config` and
//! `perceiver_config`. The vision tower is CLIP's, whose width transformers saves as
//! `embed_dim`; it deserializes into docpipe-vlm's tower settings (`hidden_size`), whose
//! encoder layers CLIP and SigLIP share. Files written by transformers 5 carry
//! `rope_parameters`, the hub's 2023 files no rotary settings at all (θ = 10000).

use std::path::Path;

use docpipe_vlm::config::{first_failure, layered, Activation, VisionConfig};
use docpipe_vlm::text::BlockDims;
use docpipe_vlm::LoadError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The `config.json` `model_type` of the checkpoints this crate runs.
pub const MODEL_TYPE: &str = "idefics";

/// `IdeficsConfig`'s defaults (idefics-9b's decoder), plus the rotary base transformers
/// assumes when a file has none.
fn defaults() -> Value {
    json!({
        "vocab_size": 32000, "additional_vocab_size": 0, "hidden_size": 4096,
        "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "hidden_act": "silu", "alpha_type": "float", "rms_norm_eps": 1e-6,
        "tie_word_embeddings": false, "cross_layer_interval": 1, "qk_layer_norms": false,
        "use_resampler": false, "rope_theta": 10000.0, "eos_token_id": 2,
    })
}

/// `IdeficsVisionConfig`'s defaults, under docpipe-vlm's field names.
fn vision_defaults() -> Value {
    json!({
        "hidden_size": 768, "image_size": 224, "intermediate_size": 5120, "patch_size": 14,
        "num_hidden_layers": 32, "num_attention_heads": 16, "num_channels": 3,
        "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    })
}

/// `IdeficsPerceiverConfig`'s defaults.
fn perceiver_defaults() -> Value {
    json!({
        "resampler_n_latents": 64, "resampler_depth": 6, "resampler_n_heads": 16,
        "resampler_head_dim": 96, "qk_layer_norms_perceiver": false,
    })
}

/// The shape of the tanh gates of the gated cross-attention blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlphaType {
    /// One number per gate, `(1)`.
    Float,
    /// One number per hidden feature, `(1, 1, hidden)`.
    Vector,
}

/// The perceiver resampler (`perceiver_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PerceiverConfig {
    /// Latents per image: the image tokens the decoder's cross-attention sees.
    pub resampler_n_latents: usize,
    /// Attention + MLP blocks.
    pub resampler_depth: usize,
    /// Attention heads.
    pub resampler_n_heads: usize,
    /// Width of one head (heads × head width need not be the vision width).
    pub resampler_head_dim: usize,
    /// LayerNorms over each head's queries and keys.
    pub qk_layer_norms_perceiver: bool,
}

/// `rope_parameters` (transformers 5) or `rope_scaling`, as written.
#[derive(Debug, Clone, Deserialize)]
struct RopeFile {
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
    rope_theta: Option<f64>,
}

/// The top level of `config.json` as written.
#[derive(Debug, Clone, Deserialize)]
struct ConfigFile {
    vocab_size: usize,
    additional_vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    hidden_act: Activation,
    alpha_type: AlphaType,
    rms_norm_eps: f64,
    tie_word_embeddings: bool,
    cross_layer_interval: usize,
    qk_layer_norms: bool,
    use_resampler: bool,
    rope_theta: f64,
    rope_parameters: Option<RopeFile>,
    rope_scaling: Option<RopeFile>,
    eos_token_id: u32,
}

/// A checkpoint's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Idefics1Config {
    /// Rows of `embed_tokens` and `lm_head` (the pretrained vocabulary).
    pub vocab_size: usize,
    /// Rows of `additional_embedding` and `additional_fc`: the tokens added for images and
    /// chat, ids `vocab_size..`.
    pub additional_vocab_size: usize,
    /// Width of the decoder.
    pub hidden_size: usize,
    /// Width of the MLPs (decoder and cross-attention blocks).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (self- and cross-attention; no grouped keys).
    pub num_attention_heads: usize,
    /// MLP nonlinearity.
    pub hidden_act: Activation,
    /// Shape of the gates.
    pub alpha_type: AlphaType,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// `lm_head` shares the embedding tables (when the checkpoint has no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// A gated cross-attention block runs before every `cross_layer_interval`-th layer.
    pub cross_layer_interval: usize,
    /// RMSNorms over each head's queries and keys in the cross-attention.
    pub qk_layer_norms: bool,
    /// Image tokens go through the perceiver (every released checkpoint); otherwise the
    /// decoder attends to the tower's tokens directly.
    pub use_resampler: bool,
    /// The rotary base.
    pub rope_theta: f64,
    /// `</s>`: also ends the image a token attends to (`image_attention_mask`'s `eod` rule).
    pub eos_token_id: u32,
    /// The CLIP tower.
    pub vision: VisionConfig,
    /// The resampler.
    pub perceiver: PerceiverConfig,
}

/// `vision_config` with CLIP's names mapped onto docpipe-vlm's and square sizes written as
/// numbers (transformers accepts `[h, w]` too).
fn vision_value(root: &Value) -> Result<Value, String> {
    let mut v = root
        .get("vision_config")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let Some(map) = v.as_object_mut() else {
        return Err("vision_config must be an object".into());
    };
    if let Some(width) = map.remove("embed_dim") {
        map.insert("hidden_size".into(), width);
    }
    for key in ["image_size", "patch_size"] {
        if let Some(Value::Array(sides)) = map.get(key) {
            match sides.as_slice() {
                [h, w] if h == w => {
                    let side = h.clone();
                    map.insert(key.into(), side);
                }
                _ => return Err(format!("vision_config.{key} must be square")),
            }
        }
    }
    Ok(v)
}

impl Idefics1Config {
    /// Reads a parsed `config.json`; `path` is only used in error messages.
    pub fn from_value(root: &Value, path: &Path) -> Result<Self, LoadError> {
        let file: ConfigFile = layered(defaults(), &[(root, path)])?;
        let vision_json = vision_value(root).map_err(|m| LoadError::invalid(path, m))?;
        let prefixed = |section: &'static str| {
            move |e: LoadError| match e {
                LoadError::Invalid { path, message } => LoadError::Invalid {
                    path,
                    message: format!("{section}: {message}"),
                },
                other => other,
            }
        };
        let vision: VisionConfig = layered(vision_defaults(), &[(&vision_json, path)])
            .map_err(prefixed("vision_config"))?;
        let empty = json!({});
        let perceiver_json = root
            .get("perceiver_config")
            .filter(|v| !v.is_null())
            .unwrap_or(&empty);
        let perceiver: PerceiverConfig = layered(perceiver_defaults(), &[(perceiver_json, path)])
            .map_err(prefixed("perceiver_config"))?;
        let rope = file.rope_parameters.as_ref().or(file.rope_scaling.as_ref());
        if let Some(kind) = rope.and_then(|r| r.rope_type.as_deref()) {
            if kind != "default" {
                return Err(LoadError::invalid(
                    path,
                    format!("rope_type {kind:?} is not supported (Idefics1 uses the default rotary embedding)"),
                ));
            }
        }
        let config = Idefics1Config {
            vocab_size: file.vocab_size,
            additional_vocab_size: file.additional_vocab_size,
            hidden_size: file.hidden_size,
            intermediate_size: file.intermediate_size,
            num_hidden_layers: file.num_hidden_layers,
            num_attention_heads: file.num_attention_heads,
            hidden_act: file.hidden_act,
            alpha_type: file.alpha_type,
            rms_norm_eps: file.rms_norm_eps,
            tie_word_embeddings: file.tie_word_embeddings,
            cross_layer_interval: file.cross_layer_interval,
            qk_layer_norms: file.qk_layer_norms,
            use_resampler: file.use_resampler,
            rope_theta: rope.and_then(|r| r.rope_theta).unwrap_or(file.rope_theta),
            eos_token_id: file.eos_token_id,
            vision,
            perceiver,
        };
        config.vision.check(path)?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), LoadError> {
        let heads = self.num_attention_heads;
        let p = &self.perceiver;
        first_failure(
            &[
                (
                    heads > 0 && self.hidden_size.is_multiple_of(heads),
                    "hidden_size must be a multiple of num_attention_heads",
                ),
                (
                    self.head_dim().is_multiple_of(2),
                    "hidden_size / num_attention_heads must be even (rotary embeddings)",
                ),
                (
                    self.cross_layer_interval > 0
                        && self.num_hidden_layers.is_multiple_of(self.cross_layer_interval),
                    "num_hidden_layers must be a multiple of cross_layer_interval (transformers indexes past its cross-attention blocks otherwise)",
                ),
                (
                    !self.use_resampler
                        || (p.resampler_n_latents > 0
                            && p.resampler_n_heads > 0
                            && p.resampler_head_dim > 0),
                    "perceiver_config: resampler_n_latents, resampler_n_heads and resampler_head_dim must be positive",
                ),
            ],
            path,
        )
    }

    /// Width of one attention head of the decoder.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// The sizes of its decoder blocks (LLaMA: as many key/value heads as query heads).
    pub fn block_dims(&self) -> BlockDims {
        BlockDims {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_attention_heads,
            head_dim: self.head_dim(),
            intermediate: self.intermediate_size,
            rms_norm_eps: self.rms_norm_eps,
            act: self.hidden_act,
        }
    }

    /// Width of the logits and of the embedding table: `vocab_size + additional_vocab_size`.
    pub fn total_vocab_size(&self) -> usize {
        self.vocab_size + self.additional_vocab_size
    }

    /// The gated cross-attention block that runs before decoder layer `layer`, if any.
    pub fn cross_block(&self, layer: usize) -> Option<usize> {
        layer
            .is_multiple_of(self.cross_layer_interval)
            .then_some(layer / self.cross_layer_interval)
    }

    /// Gated cross-attention blocks.
    pub fn cross_blocks(&self) -> usize {
        self.num_hidden_layers / self.cross_layer_interval
    }

    /// Image tokens per image that the decoder attends to: the perceiver's latents, or the
    /// tower's class and patch tokens.
    pub fn image_tokens(&self) -> usize {
        if self.use_resampler {
            self.perceiver.resampler_n_latents
        } else {
            let side = self.vision.image_size / self.vision.patch_size;
            side * side + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: Value) -> Result<Idefics1Config, LoadError> {
        Idefics1Config::from_value(&value, Path::new("config.json"))
    }

    #[test]
    fn the_hub_layout_reads_over_the_class_defaults() {
        let config = read(json!({
            "model_type": "idefics", "additional_vocab_size": 2, "cross_layer_interval": 4,
            "use_resampler": true,
            "vision_config": {"embed_dim": 1280, "image_size": 224, "intermediate_size": 5120,
                              "patch_size": 14, "num_attention_heads": 16, "num_hidden_layers": 32},
            "perceiver_config": {"resampler_n_latents": 64, "resampler_head_dim": 96},
        }))
        .unwrap();
        assert_eq!(config.vision.hidden_size, 1280);
        assert_eq!(config.rope_theta, 10000.0);
        assert_eq!(config.total_vocab_size(), 32002);
        assert_eq!(
            (
                config.cross_blocks(),
                config.cross_block(4),
                config.cross_block(5)
            ),
            (8, Some(1), None)
        );
        assert_eq!(config.image_tokens(), 64);
        assert_eq!(config.head_dim(), 128);
    }

    #[test]
    fn bad_settings_name_the_file_and_the_field() {
        let message = read(json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("config.json") && message.contains("yarn"),
            "{message}"
        );
        let message = read(json!({"vision_config": {"embed_dim": "wide"}}))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("vision_config") && message.contains("string"),
            "{message}"
        );
        let message = read(json!({"num_hidden_layers": 5, "cross_layer_interval": 2}))
            .unwrap_err()
            .to_string();
        assert!(message.contains("cross_layer_interval"), "{message}");
    }
}
