//! Florence-2 checkpoint settings, deserialized with serde over transformers' class defaults
//! (`Florence2VisionConfig`, `BartConfig`, `GenerationConfig`), each declared once below.
//!
//! The two `config.json` layouts name the vision settings differently: transformers' native
//! one says `embed_dim`, `max_position_embeddings`, `max_temporal_embeddings`; the hub's
//! remote-code one says `dim_embed` and nests the other two in `image_pos_embed` and
//! `visual_temporal_embedding`. Both deserialize into the same [`VisionConfig`].

use std::path::Path;

use docpipe_vlm::config::{first_failure, layered, read_json, section, Activation};
use docpipe_vlm::LoadError;
use serde::Deserialize;
use serde_json::{json, Value};

/// The `config.json` `model_type` of the checkpoints this crate runs (both layouts).
pub const MODEL_TYPE: &str = "florence2";

/// `Florence2VisionConfig`'s defaults (Florence-2-base's DaViT).
fn vision_defaults() -> Value {
    json!({
        "depths": [1, 1, 9, 1], "embed_dim": [128, 256, 512, 1024], "num_heads": [4, 8, 16, 32],
        "num_groups": [4, 8, 16, 32], "patch_size": [7, 3, 3, 3], "patch_stride": [4, 2, 2, 2],
        "patch_padding": [3, 1, 1, 1], "patch_prenorm": [false, true, true, true],
        "window_size": 12, "mlp_ratio": 4.0, "qkv_bias": true, "activation_function": "gelu",
        "projection_dim": 1024, "max_position_embeddings": 50, "max_temporal_embeddings": 100,
    })
}

/// `BartConfig`'s defaults.
fn text_defaults() -> Value {
    json!({
        "vocab_size": 50265, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
        "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
        "decoder_ffn_dim": 4096, "max_position_embeddings": 1024, "activation_function": "gelu",
        "scale_embedding": false, "tie_word_embeddings": true,
    })
}

/// The DaViT tower and projector settings (`vision_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Channels per stage (`dim_embed` in the remote-code layout).
    pub embed_dim: Vec<usize>,
    /// Window-attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Channel-attention groups per stage.
    pub num_groups: Vec<usize>,
    /// Kernel side of each stage's patch-embedding convolution.
    pub patch_size: Vec<usize>,
    /// Its stride.
    pub patch_stride: Vec<usize>,
    /// Its zero padding.
    pub patch_padding: Vec<usize>,
    /// Whether the stage's LayerNorm comes before its convolution (after it when false).
    pub patch_prenorm: Vec<bool>,
    /// Side of the attention windows, in tokens.
    pub window_size: usize,
    /// MLP width over channels.
    pub mlp_ratio: f64,
    /// Whether the attention `qkv` projections have biases.
    pub qkv_bias: bool,
    /// The MLPs' nonlinearity.
    pub activation_function: Activation,
    /// Width of the projected image tokens (the language model's `d_model`).
    pub projection_dim: usize,
    /// Rows and columns of the learned 2-D position table.
    pub max_position_embeddings: usize,
    /// Rows of the cosine temporal table.
    pub max_temporal_embeddings: usize,
}

/// `image_pos_embed` of the remote-code layout.
#[derive(Deserialize)]
struct RemotePositions {
    max_pos_embeddings: usize,
}

/// `visual_temporal_embedding` of the remote-code layout.
#[derive(Deserialize)]
struct RemoteTemporal {
    max_temporal_embeddings: usize,
}

impl VisionConfig {
    /// `vision_config` of `root` over the class defaults, in either layout.
    pub fn from_root(root: &Value, path: &Path) -> Result<Self, LoadError> {
        let mut vision = root.get("vision_config").cloned().unwrap_or(json!({}));
        let invalid =
            |e: serde_json::Error| LoadError::invalid(path, format!("vision_config: {e}"));
        if let Some(p) = vision.get("image_pos_embed").cloned() {
            let p: RemotePositions = serde_json::from_value(p).map_err(invalid)?;
            vision["max_position_embeddings"] = p.max_pos_embeddings.into();
        }
        if let Some(t) = vision.get("visual_temporal_embedding").cloned() {
            let t: RemoteTemporal = serde_json::from_value(t).map_err(invalid)?;
            vision["max_temporal_embeddings"] = t.max_temporal_embeddings.into();
        }
        if let Some(dims) = vision.as_object_mut().and_then(|v| v.remove("dim_embed")) {
            vision["embed_dim"] = dims;
        }
        let config: VisionConfig = section(
            &json!({ "vision_config": vision }),
            "vision_config",
            vision_defaults(),
            path,
        )?;
        config.check(path)?;
        Ok(config)
    }

    /// The number of stages.
    pub fn stages(&self) -> usize {
        self.embed_dim.len()
    }

    /// Channels of the last stage (what the projector reads).
    pub fn out_dim(&self) -> usize {
        self.embed_dim[self.stages() - 1]
    }

    /// `(rows, columns)` of the last stage's feature map for a `height × width` image: each
    /// stage's convolution maps a side `n` to `(n + 2·padding - kernel) / stride + 1`. `None`
    /// when a stage would have nothing left.
    pub fn feature_size(&self, height: usize, width: usize) -> Option<(usize, usize)> {
        let mut size = (height, width);
        for stage in 0..self.stages() {
            let (k, s, p) = (
                self.patch_size[stage],
                self.patch_stride[stage],
                self.patch_padding[stage],
            );
            let side = |n: usize| (n + 2 * p).checked_sub(k).map(|m| m / s + 1);
            size = (side(size.0)?, side(size.1)?);
        }
        Some(size)
    }

    fn check(&self, path: &Path) -> Result<(), LoadError> {
        let n = self.stages();
        let lists = [
            self.depths.len(),
            self.num_heads.len(),
            self.num_groups.len(),
            self.patch_size.len(),
            self.patch_stride.len(),
            self.patch_padding.len(),
            self.patch_prenorm.len(),
        ];
        let divides = |parts: &[usize]| {
            self.embed_dim
                .iter()
                .zip(parts)
                .all(|(&d, &p)| p > 0 && d % p == 0)
        };
        first_failure(
            &[
                (n > 0, "vision_config: no stages"),
                (
                    lists.iter().all(|&l| l == n),
                    "vision_config: depths, heads, groups and patch settings must list one value per stage",
                ),
                (
                    divides(&self.num_heads),
                    "vision_config: each stage's channels must be a multiple of its num_heads",
                ),
                (
                    divides(&self.num_groups),
                    "vision_config: each stage's channels must be a multiple of its num_groups",
                ),
                (
                    self.patch_stride.iter().all(|&s| s > 0) && self.window_size > 0,
                    "vision_config: patch strides and window_size must be positive",
                ),
            ],
            path,
        )
    }
}

/// The BART encoder-decoder settings (`text_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TextConfig {
    /// Rows of the shared embedding (and of the logits).
    pub vocab_size: usize,
    /// Width of the encoder and decoder.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder MLP width.
    pub encoder_ffn_dim: usize,
    /// Decoder MLP width.
    pub decoder_ffn_dim: usize,
    /// Positions of the learned tables (which hold 2 more rows: BART's offset).
    pub max_position_embeddings: usize,
    /// The MLPs' nonlinearity.
    pub activation_function: Activation,
    /// Whether token embeddings are multiplied by `sqrt(d_model)`.
    pub scale_embedding: bool,
    /// Whether the logits use the shared embedding (every Florence-2 checkpoint does).
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    /// `text_config` of `root` over `BartConfig`'s defaults; `tie_word_embeddings` falls back
    /// to the top-level one.
    pub fn from_root(root: &Value, path: &Path) -> Result<Self, LoadError> {
        let mut defaults = text_defaults();
        if let Some(tie) = root.get("tie_word_embeddings").filter(|v| v.is_boolean()) {
            defaults["tie_word_embeddings"] = tie.clone();
        }
        let config: TextConfig = section(root, "text_config", defaults, path)?;
        first_failure(
            &[
                (
                    config.encoder_attention_heads > 0
                        && config
                            .d_model
                            .is_multiple_of(config.encoder_attention_heads)
                        && config.decoder_attention_heads > 0
                        && config
                            .d_model
                            .is_multiple_of(config.decoder_attention_heads),
                    "text_config: d_model must be a multiple of the attention heads",
                ),
                (
                    config.vocab_size > 0,
                    "text_config: vocab_size must be positive",
                ),
            ],
            path,
        )?;
        Ok(config)
    }
}

/// When beam search stops (`early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EarlyStopping {
    /// `true` stops a request once it has `num_beams` finished hypotheses; `false` also stops
    /// it when no running beam can beat the worst finished one at the current length.
    Flag(bool),
    /// `"never"`: as `false`, but estimating a running beam's best score at `max_length`.
    Never(NeverTag),
}

/// The string `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum NeverTag {
    /// `"never"`.
    #[serde(rename = "never")]
    Never,
}

/// One id or a list of ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// What `generation_config.json` (or, without one, `text_config`) says about decoding.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GenerationConfig {
    /// Beams per request; 1 is greedy.
    pub num_beams: usize,
    /// N-grams of this size occur at most once in a sequence (0: no constraint).
    pub no_repeat_ngram_size: usize,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Finished beams score `sum log p / length^length_penalty`.
    pub length_penalty: f32,
    /// The decoder's first input token.
    pub decoder_start_token_id: u32,
    /// The token forced at the first step, if any.
    pub forced_bos_token_id: Option<u32>,
    /// The token forced at the last step allowed by `max_new_tokens`, if any.
    pub forced_eos_token_id: Option<u32>,
    #[serde(rename = "eos_token_id")]
    eos: OneOrMany,
}

impl GenerationConfig {
    /// Reads `generation_config.json` over transformers' defaults; without the file, the
    /// generation settings of `config.json`'s `text_config` (where remote-code checkpoints
    /// also keep them).
    pub fn load(dir: &Path, root: &Value, config_path: &Path) -> Result<Self, LoadError> {
        let defaults = json!({
            "num_beams": 1, "no_repeat_ngram_size": 0, "early_stopping": false,
            "length_penalty": 1.0, "decoder_start_token_id": 2, "forced_bos_token_id": null,
            "forced_eos_token_id": null, "eos_token_id": 2,
        });
        let path = dir.join("generation_config.json");
        if path.exists() {
            let file = read_json(&path)?;
            layered(defaults, &[(&file, &path)])
        } else {
            let text = root.get("text_config").cloned().unwrap_or(json!({}));
            layered(defaults, &[(&text, config_path)])
        }
    }

    /// The ids that end a sequence.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.eos {
            OneOrMany::One(id) => vec![*id],
            OneOrMany::Many(ids) => ids.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_vision_layouts_give_the_same_config() {
        let native = json!({"vision_config": {"embed_dim": [8, 16], "depths": [1, 2],
            "num_heads": [1, 2], "num_groups": [1, 2], "patch_size": [7, 3], "patch_stride": [4, 2],
            "patch_padding": [3, 1], "patch_prenorm": [false, true], "max_position_embeddings": 20,
            "max_temporal_embeddings": 10}});
        let remote = json!({"vision_config": {"model_type": "davit", "dim_embed": [8, 16],
            "depths": [1, 2], "num_heads": [1, 2], "num_groups": [1, 2], "patch_size": [7, 3],
            "patch_stride": [4, 2], "patch_padding": [3, 1], "patch_prenorm": [false, true],
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 20},
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 10}}});
        let path = Path::new("config.json");
        let a = VisionConfig::from_root(&native, path).unwrap();
        let b = VisionConfig::from_root(&remote, path).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.out_dim(), a.max_position_embeddings), (16, 20));
        // 7x7 stride 4 pad 3, then 3x3 stride 2 pad 1: ceil(n / 4), then ceil(n / 8).
        assert_eq!(a.feature_size(768, 100), Some((96, 13)));
        assert_eq!(a.feature_size(2, 2), Some((1, 1)));
        assert_eq!(a.feature_size(0, 5), None);
    }

    #[test]
    fn inconsistent_stage_lists_are_rejected() {
        let bad = json!({"vision_config": {"embed_dim": [8, 16], "depths": [1]}});
        let message = VisionConfig::from_root(&bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("one value per stage"), "{message}");
    }

    #[test]
    fn early_stopping_reads_flags_and_never() {
        for (value, want) in [
            (json!(true), EarlyStopping::Flag(true)),
            (json!("never"), EarlyStopping::Never(NeverTag::Never)),
        ] {
            assert_eq!(
                serde_json::from_value::<EarlyStopping>(value).unwrap(),
                want
            );
        }
        assert!(serde_json::from_value::<EarlyStopping>(json!("sometimes")).is_err());
    }
}
