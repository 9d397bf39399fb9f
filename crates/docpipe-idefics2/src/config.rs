//! Checkpoint configuration: `config.json`, `generation_config.json` and the image-processor
//! settings, read the way transformers reads them (class defaults fill absent fields).
//!
//! Two `config.json` layouts exist in the wild: the 2024 one (`rope_theta` directly in
//! `text_config`) and the transformers 5 one (`text_config.rope_parameters.rope_theta`). Both
//! are accepted.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::LoadError;

/// The `config.json` `model_type` of the checkpoints this crate runs.
pub const MODEL_TYPE: &str = "idefics2";

/// A nonlinearity named in a config (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    Gelu,
    Relu,
}

impl Activation {
    fn parse(name: &str, path: &Path) -> Result<Self, LoadError> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            other => Err(LoadError::invalid(
                path,
                format!("unsupported hidden_act {other:?} (supported: silu, gelu_pytorch_tanh, gelu_new, gelu, relu)"),
            )),
        }
    }

    pub fn apply(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(xs),
            Activation::GeluTanh => xs.gelu(),
            Activation::Gelu => xs.gelu_erf(),
            Activation::Relu => xs.relu(),
        }
    }
}

/// SigLIP vision tower settings (`vision_config`).
#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side of the position table (70 for idefics2-8b).
    pub fn num_patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Perceiver resampler settings (`perceiver_config`).
#[derive(Debug, Clone)]
pub struct PerceiverConfig {
    pub hidden_size: usize,
    pub n_latents: usize,
    pub depth: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub num_key_value_heads: usize,
    pub hidden_act: Activation,
    pub rms_norm_eps: f64,
}

/// Mistral decoder settings (`text_config`).
#[derive(Debug, Clone)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
}

/// The whole `config.json`.
#[derive(Debug, Clone)]
pub struct Idefics2Config {
    pub vision: VisionConfig,
    pub perceiver: PerceiverConfig,
    pub text: TextConfig,
    pub image_token_id: u32,
}

fn field<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn usize_or(obj: &Value, key: &str, default: usize, path: &Path) -> Result<usize, LoadError> {
    match field(obj, key) {
        None => Ok(default),
        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
            LoadError::invalid(
                path,
                format!("{key} must be a non-negative integer, got {v}"),
            )
        }),
    }
}

fn f64_or(obj: &Value, key: &str, default: f64, path: &Path) -> Result<f64, LoadError> {
    match field(obj, key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| LoadError::invalid(path, format!("{key} must be a number, got {v}"))),
    }
}

fn act_or(
    obj: &Value,
    key: &str,
    default: Activation,
    path: &Path,
) -> Result<Activation, LoadError> {
    match field(obj, key) {
        None => Ok(default),
        Some(Value::String(s)) => Activation::parse(s, path),
        Some(v) => Err(LoadError::invalid(
            path,
            format!("{key} must be a string, got {v}"),
        )),
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Idefics2Config {
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        Self::from_value(&read_json(path)?, path)
    }

    /// Reads a parsed `config.json`; `path` is only used in error messages.
    pub fn from_value(root: &Value, path: &Path) -> Result<Self, LoadError> {
        let model_type = field(root, "model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model_type != MODEL_TYPE {
            return Err(LoadError::UnsupportedModelType {
                path: path.to_path_buf(),
                found: model_type.to_string(),
            });
        }
        let empty = Value::Object(Default::default());
        let v = field(root, "vision_config").unwrap_or(&empty);
        let vision = VisionConfig {
            hidden_size: usize_or(v, "hidden_size", 768, path)?,
            intermediate_size: usize_or(v, "intermediate_size", 3072, path)?,
            num_hidden_layers: usize_or(v, "num_hidden_layers", 12, path)?,
            num_attention_heads: usize_or(v, "num_attention_heads", 12, path)?,
            num_channels: usize_or(v, "num_channels", 3, path)?,
            image_size: usize_or(v, "image_size", 224, path)?,
            patch_size: usize_or(v, "patch_size", 32, path)?,
            hidden_act: act_or(v, "hidden_act", Activation::GeluTanh, path)?,
            layer_norm_eps: f64_or(v, "layer_norm_eps", 1e-6, path)?,
        };
        let text = Self::text_config(field(root, "text_config").unwrap_or(&empty), root, path)?;
        let p = field(root, "perceiver_config").unwrap_or(&empty);
        // transformers forces the perceiver width to the text width and then also takes the
        // text eps; an absent eps falls back to the text eps too (see the crate docs).
        let declared_hidden = usize_or(p, "hidden_size", 4096, path)?;
        let rms_norm_eps = match field(p, "rms_norm_eps") {
            Some(_) if declared_hidden == text.hidden_size => f64_or(p, "rms_norm_eps", 0.0, path)?,
            _ => text.rms_norm_eps,
        };
        let perceiver = PerceiverConfig {
            hidden_size: text.hidden_size,
            n_latents: usize_or(p, "resampler_n_latents", 64, path)?,
            depth: usize_or(p, "resampler_depth", 3, path)?,
            n_heads: usize_or(p, "resampler_n_heads", 16, path)?,
            head_dim: usize_or(p, "resampler_head_dim", 96, path)?,
            num_key_value_heads: usize_or(p, "num_key_value_heads", 4, path)?,
            hidden_act: act_or(p, "hidden_act", Activation::Silu, path)?,
            rms_norm_eps,
        };
        let config = Idefics2Config {
            image_token_id: usize_or(root, "image_token_id", 32001, path)? as u32,
            vision,
            perceiver,
            text,
        };
        config.validate(path)?;
        Ok(config)
    }

    fn text_config(t: &Value, root: &Value, path: &Path) -> Result<TextConfig, LoadError> {
        let hidden_size = usize_or(t, "hidden_size", 4096, path)?;
        let num_attention_heads = usize_or(t, "num_attention_heads", 32, path)?;
        let rope_theta = match field(t, "rope_parameters") {
            Some(params) => {
                let kind = field(params, "rope_type")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if kind != "default" {
                    return Err(LoadError::invalid(
                        path,
                        format!("text_config.rope_parameters.rope_type {kind:?} is not supported (only \"default\")"),
                    ));
                }
                f64_or(params, "rope_theta", 10000.0, path)?
            }
            None => {
                if field(t, "rope_scaling").is_some() {
                    return Err(LoadError::invalid(
                        path,
                        "text_config.rope_scaling is not supported",
                    ));
                }
                f64_or(t, "rope_theta", 10000.0, path)?
            }
        };
        let sliding_window = match field(t, "sliding_window") {
            None => None,
            Some(_) => Some(usize_or(t, "sliding_window", 0, path)?),
        };
        let tie = field(t, "tie_word_embeddings")
            .or_else(|| field(root, "tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(TextConfig {
            vocab_size: usize_or(t, "vocab_size", 32000, path)?,
            hidden_size,
            intermediate_size: usize_or(t, "intermediate_size", 14336, path)?,
            num_hidden_layers: usize_or(t, "num_hidden_layers", 32, path)?,
            num_attention_heads,
            num_key_value_heads: usize_or(t, "num_key_value_heads", 8, path)?,
            head_dim: usize_or(
                t,
                "head_dim",
                hidden_size / num_attention_heads.max(1),
                path,
            )?,
            hidden_act: act_or(t, "hidden_act", Activation::Silu, path)?,
            rms_norm_eps: f64_or(t, "rms_norm_eps", 1e-6, path)?,
            rope_theta,
            sliding_window,
            tie_word_embeddings: tie,
        })
    }

    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let checks: [(bool, &str); 7] = [
            (
                self.vision.num_channels == 3,
                "vision_config.num_channels must be 3 (RGB)",
            ),
            (
                self.vision.num_attention_heads > 0
                    && self.vision.hidden_size % self.vision.num_attention_heads == 0,
                "vision_config.hidden_size must be a multiple of num_attention_heads",
            ),
            (
                self.vision.patch_size > 0 && self.vision.image_size >= self.vision.patch_size,
                "vision_config.image_size must be at least patch_size",
            ),
            (
                self.text.num_key_value_heads > 0
                    && self.text.num_attention_heads % self.text.num_key_value_heads == 0,
                "text_config.num_attention_heads must be a multiple of num_key_value_heads",
            ),
            (
                self.text.head_dim % 2 == 0 && self.text.head_dim > 0,
                "text_config.head_dim must be even",
            ),
            (
                self.perceiver.num_key_value_heads > 0
                    && self.perceiver.n_heads % self.perceiver.num_key_value_heads == 0,
                "perceiver_config.resampler_n_heads must be a multiple of num_key_value_heads",
            ),
            (
                (self.image_token_id as usize) < self.text.vocab_size,
                "image_token_id must be below text_config.vocab_size",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(LoadError::invalid(path, *message)),
            None => Ok(()),
        }
    }
}

/// What `generation_config.json` contributes to greedy decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    /// Token sequences that must not be produced; the last id of a sequence is banned when the
    /// text so far ends with the rest of it (single ids are always banned).
    pub bad_words_ids: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct GenerationConfigFile {
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    bad_words_ids: Option<Vec<Vec<u32>>>,
}

impl GenerationConfig {
    /// Reads `generation_config.json`; without one, the eos is `text_config.eos_token_id` (or
    /// the top-level one, or Mistral's 2) as transformers does.
    pub fn load(path: &Path, model_config: &Value) -> Result<Self, LoadError> {
        let fallback_eos = || {
            model_config
                .get("text_config")
                .and_then(|t| t.get("eos_token_id"))
                .or_else(|| model_config.get("eos_token_id"))
                .and_then(Value::as_u64)
                .map(|id| id as u32)
                .unwrap_or(2)
        };
        if !path.exists() {
            return Ok(GenerationConfig {
                eos_token_ids: vec![fallback_eos()],
                bad_words_ids: Vec::new(),
            });
        }
        let file: GenerationConfigFile =
            serde_json::from_value(read_json(path)?).map_err(|source| LoadError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let eos_token_ids = match file.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) if !ids.is_empty() => ids,
            _ => vec![fallback_eos()],
        };
        let bad_words_ids = file.bad_words_ids.unwrap_or_default();
        if bad_words_ids.iter().any(Vec::is_empty) {
            return Err(LoadError::invalid(
                path,
                "bad_words_ids contains an empty sequence",
            ));
        }
        Ok(GenerationConfig {
            eos_token_ids,
            bad_words_ids,
        })
    }
}

/// PIL convolution filters, by their `resample` number in `preprocessor_config.json`
/// (nearest, 0, is not a convolution in Pillow and is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

/// `Idefics2ImageProcessor` settings plus the processor's `image_seq_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub shortest_edge: usize,
    pub longest_edge: usize,
    pub resample: Resample,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_image_splitting: bool,
    pub image_seq_len: usize,
}

impl Default for ProcessorConfig {
    /// The `Idefics2ImageProcessor` / `Idefics2Processor` class defaults.
    fn default() -> Self {
        ProcessorConfig {
            do_convert_rgb: true,
            do_resize: true,
            shortest_edge: 378,
            longest_edge: 980,
            resample: Resample::Bilinear,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_image_splitting: false,
            image_seq_len: 64,
        }
    }
}

impl ProcessorConfig {
    /// Reads `preprocessor_config.json` and then `processor_config.json` from `dir` (either may
    /// be absent). transformers 5 nests the image-processor settings under `image_processor`
    /// in `processor_config.json`; older checkpoints keep them flat in the preprocessor file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let mut config = ProcessorConfig::default();
        let pre = dir.join("preprocessor_config.json");
        if pre.exists() {
            config.apply(&read_json(&pre)?, &pre)?;
        }
        let proc_path = dir.join("processor_config.json");
        if proc_path.exists() {
            let proc = read_json(&proc_path)?;
            config.apply(&proc, &proc_path)?;
            if let Some(nested) = field(&proc, "image_processor") {
                config.apply(nested, &proc_path)?;
            }
        }
        Ok(config)
    }

    fn apply(&mut self, v: &Value, path: &Path) -> Result<(), LoadError> {
        let flag = |key: &str, current: bool| -> Result<bool, LoadError> {
            match field(v, key) {
                None => Ok(current),
                Some(b) => b.as_bool().ok_or_else(|| {
                    LoadError::invalid(path, format!("{key} must be true or false"))
                }),
            }
        };
        self.do_convert_rgb = flag("do_convert_rgb", self.do_convert_rgb)?;
        self.do_resize = flag("do_resize", self.do_resize)?;
        self.do_rescale = flag("do_rescale", self.do_rescale)?;
        self.do_normalize = flag("do_normalize", self.do_normalize)?;
        self.do_image_splitting = flag("do_image_splitting", self.do_image_splitting)?;
        self.image_seq_len = usize_or(v, "image_seq_len", self.image_seq_len, path)?;
        self.rescale_factor = f64_or(v, "rescale_factor", self.rescale_factor, path)?;
        if let Some(size) = field(v, "size") {
            self.shortest_edge = usize_or(size, "shortest_edge", self.shortest_edge, path)?;
            self.longest_edge = usize_or(size, "longest_edge", self.longest_edge, path)?;
        }
        if let Some(r) = field(v, "resample") {
            self.resample = match r.as_u64() {
                Some(1) => Resample::Lanczos,
                Some(2) => Resample::Bilinear,
                Some(3) => Resample::Bicubic,
                Some(4) => Resample::Box,
                Some(5) => Resample::Hamming,
                _ => {
                    return Err(LoadError::invalid(
                        path,
                        format!("unsupported resample {r} (supported: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"),
                    ))
                }
            };
        }
        for (key, target) in [
            ("image_mean", &mut self.image_mean),
            ("image_std", &mut self.image_std),
        ] {
            match field(v, key) {
                None => {}
                Some(Value::Number(n)) => *target = [n.as_f64().unwrap_or(0.0) as f32; 3],
                Some(Value::Array(items)) if items.len() == 3 => {
                    for (slot, item) in target.iter_mut().zip(items) {
                        *slot = item.as_f64().ok_or_else(|| {
                            LoadError::invalid(path, format!("{key} must hold numbers"))
                        })? as f32;
                    }
                }
                Some(other) => {
                    return Err(LoadError::invalid(
                        path,
                        format!("{key} must be 3 numbers, got {other}"),
                    ))
                }
            }
        }
        if self.image_std.contains(&0.0) {
            return Err(LoadError::invalid(path, "image_std must not contain 0"));
        }
        Ok(())
    }
}
