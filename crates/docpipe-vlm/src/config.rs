//! The checkpoint settings the families share, deserialized with serde from `config.json`,
//! `generation_config.json` and the image-processor files.
//!
//! transformers fills absent fields with its config classes' defaults, which differ between
//! families (Idefics2's vision tower defaults to 768 wide, Idefics3's to 1152). A family
//! therefore declares its class defaults once, as JSON ([`section`] and [`layered`] put the
//! checkpoint's own values over them), and the structs here declare none of their own.
//!
//! Two `config.json` layouts exist: the 2024 hub one (`rope_theta` and `rope_scaling` in
//! `text_config`) and the transformers 5 one (`text_config.rope_parameters`); [`TextConfig`]
//! accepts both.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::LoadError;

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Value, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A checkpoint's `config.json`, parsed, with its bytes (they go into the model id).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it is.
    pub path: std::path::PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its content.
    pub json: Value,
}

impl ConfigFile {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("config.json");
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        let json = serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
            path: path.clone(),
            source,
        })?;
        Ok(ConfigFile { path, bytes, json })
    }
}

/// Writes the non-null fields of `over` onto `base`, recursing into objects (a file that sets
/// only `size.longest_edge` keeps the default `size.shortest_edge`).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                if value.is_null() {
                    continue;
                }
                match base.get_mut(key) {
                    Some(slot) if slot.is_object() && value.is_object() => merge(slot, value),
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// Deserializes `layers` (parsed files, each with the file it came from, later ones winning)
/// over `defaults`. A type error names the last file and the serde message (which names the
/// field).
pub fn layered<T: DeserializeOwned>(
    defaults: Value,
    layers: &[(&Value, &Path)],
) -> Result<T, LoadError> {
    let mut merged = defaults;
    for (layer, _) in layers {
        merge(&mut merged, layer);
    }
    let path = layers.last().map_or(Path::new(""), |(_, p)| p);
    T::deserialize(merged).map_err(|e| LoadError::invalid(path, e.to_string()))
}

/// `root[key]` over `defaults`, deserialized; errors name the key.
pub fn section<T: DeserializeOwned>(
    root: &Value,
    key: &str,
    defaults: Value,
    path: &Path,
) -> Result<T, LoadError> {
    let empty = Value::Object(Default::default());
    let value = root.get(key).filter(|v| !v.is_null()).unwrap_or(&empty);
    layered(defaults, &[(value, path)]).map_err(|e| match e {
        LoadError::Invalid { path, message } => LoadError::Invalid {
            path,
            message: format!("{key}: {message}"),
        },
        other => other,
    })
}

/// Checks `config.json`'s `model_type`.
pub fn check_model_type(
    root: &Value,
    expected: &'static str,
    path: &Path,
) -> Result<(), LoadError> {
    let found = root.get("model_type").and_then(Value::as_str).unwrap_or("");
    if found == expected {
        Ok(())
    } else {
        Err(LoadError::UnsupportedModelType {
            path: path.to_path_buf(),
            found: found.to_string(),
            expected,
        })
    }
}

/// A nonlinearity named in a config (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `silu` / `swish`.
    #[serde(alias = "swish", rename = "silu")]
    Silu,
    /// `gelu_pytorch_tanh` / `gelu_new` / `gelu_fast`: the tanh approximation.
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new", alias = "gelu_fast")]
    GeluTanh,
    /// `gelu`: the exact erf form.
    #[serde(rename = "gelu")]
    Gelu,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    /// Applies the nonlinearity elementwise.
    pub fn apply(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(xs),
            Activation::GeluTanh => xs.gelu(),
            Activation::Gelu => xs.gelu_erf(),
            Activation::Relu => xs.relu(),
        }
    }
}

/// SigLIP vision tower settings (`vision_config`), the same fields in both families.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Width of the tower.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input channels; must be 3.
    pub num_channels: usize,
    /// Side of the largest image, in pixels (the position table covers it).
    pub image_size: usize,
    /// Side of a patch, in pixels.
    pub patch_size: usize,
    /// MLP nonlinearity.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Patches per side of the position table (70 for idefics2-8b, 26 for Idefics3-8B).
    pub fn num_patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The settings the tower cannot run without, as `(holds, message)` checks.
    pub fn check(&self, path: &Path) -> Result<(), LoadError> {
        let checks = [
            (
                self.num_channels == 3,
                "vision_config.num_channels must be 3 (RGB)",
            ),
            (
                self.num_attention_heads > 0
                    && self.hidden_size.is_multiple_of(self.num_attention_heads),
                "vision_config.hidden_size must be a multiple of num_attention_heads",
            ),
            (
                self.patch_size > 0 && self.image_size >= self.patch_size,
                "vision_config.image_size must be at least patch_size",
            ),
        ];
        first_failure(&checks, path)
    }
}

/// The first failed `(holds, message)` check as an [`LoadError::Invalid`].
pub fn first_failure(checks: &[(bool, &str)], path: &Path) -> Result<(), LoadError> {
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, message)) => Err(LoadError::invalid(path, *message)),
        None => Ok(()),
    }
}

/// What a family's `config.json` has beyond the parts every family has (vision tower, decoder,
/// image token), and the class defaults it reads all of them over.
pub trait FamilyConfig: Sized {
    /// The `model_type` of the family's checkpoints.
    const MODEL_TYPE: &'static str;
    /// The class default of `image_token_id`.
    const IMAGE_TOKEN_ID: u32;
    /// The vision config class's defaults.
    fn vision_defaults() -> Value;
    /// The text config class's defaults.
    fn text_defaults() -> Value;
    /// Reads the family's own settings from `config.json` (some resolve against the text
    /// model's); `path` is only used in error messages.
    fn read(root: &Value, text: &TextConfig, path: &Path) -> Result<Self, LoadError>;
    /// The family's own consistency check as `(holds, message)`.
    fn check(&self, vision: &VisionConfig) -> (bool, &'static str);
}

/// A family's whole `config.json`: the parts every family has, and the family's own.
#[derive(Debug, Clone)]
pub struct IdeficsConfig<F> {
    /// The SigLIP tower.
    pub vision: VisionConfig,
    /// The decoder.
    pub text: TextConfig,
    /// `<image>`, whose embeddings image features replace.
    pub image_token_id: u32,
    /// The family's own settings (Idefics2's perceiver, Idefics3's pixel-shuffle factor).
    pub family: F,
}

/// The top-level field every family has.
#[derive(Debug, Clone, Deserialize)]
struct ImageTokenId {
    image_token_id: u32,
}

impl<F: FamilyConfig> IdeficsConfig<F> {
    /// Reads a parsed `config.json`; `path` is only used in error messages.
    pub fn from_value(root: &Value, path: &Path) -> Result<Self, LoadError> {
        check_model_type(root, F::MODEL_TYPE, path)?;
        let vision: VisionConfig = section(root, "vision_config", F::vision_defaults(), path)?;
        let text = TextConfig::from_root(root, F::text_defaults(), path)?;
        let family = F::read(root, &text, path)?;
        let defaults = serde_json::json!({ "image_token_id": F::IMAGE_TOKEN_ID });
        let top: ImageTokenId = layered(defaults, &[(root, path)])?;
        let config = IdeficsConfig {
            vision,
            text,
            image_token_id: top.image_token_id,
            family,
        };
        config.vision.check(path)?;
        first_failure(
            &[
                config.family.check(&config.vision),
                (
                    (config.image_token_id as usize) < config.text.vocab_size,
                    "image_token_id must be below text_config.vocab_size",
                ),
            ],
            path,
        )?;
        Ok(config)
    }
}

/// How rotary frequencies are derived from `rope_theta` (`rope_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq = 1 / theta^(2i/d)` (Mistral, SmolLM2).
    Default,
    /// Llama 3.1's band-wise rescaling of the default frequencies (spec G.4).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// Rotary embedding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// The frequency base.
    pub theta: f64,
    /// The frequency rescaling.
    pub scaling: RopeScaling,
}

/// `rope_scaling` (2024 layout) or `rope_parameters` (transformers 5), as written.
#[derive(Debug, Clone, Deserialize)]
struct RopeFile {
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// `text_config` as written, before its rope fields and derived defaults are resolved.
#[derive(Debug, Clone, Deserialize)]
struct TextConfigFile {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Activation,
    rms_norm_eps: f64,
    rope_theta: f64,
    rope_scaling: Option<RopeFile>,
    rope_parameters: Option<RopeFile>,
    sliding_window: Option<usize>,
    tie_word_embeddings: bool,
}

/// Mistral / Llama decoder settings (`text_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "TextConfigFile")]
pub struct TextConfig {
    /// Rows of the embedding table and of `lm_head`.
    pub vocab_size: usize,
    /// Width of the decoder.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads (Llama).
    pub num_key_value_heads: usize,
    /// Width of one head; defaults to `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// MLP nonlinearity.
    pub hidden_act: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary embeddings.
    pub rope: Rope,
    /// Mistral's sliding attention window, if any (Llama has none).
    pub sliding_window: Option<usize>,
    /// `lm_head` shares the embedding table (when the checkpoint has no `lm_head.weight`).
    pub tie_word_embeddings: bool,
}

impl TryFrom<TextConfigFile> for TextConfig {
    type Error = String;

    fn try_from(file: TextConfigFile) -> Result<Self, String> {
        // transformers 5 moved rope_theta into rope_parameters; the 2024 layout keeps it
        // beside rope_scaling.
        let params = file.rope_parameters.or(file.rope_scaling);
        let theta = params
            .as_ref()
            .and_then(|p| p.rope_theta)
            .unwrap_or(file.rope_theta);
        let kind = params
            .as_ref()
            .and_then(|p| p.rope_type.clone())
            .unwrap_or_else(|| "default".to_string());
        let scaling = match (kind.as_str(), &params) {
            ("default", _) => RopeScaling::Default,
            ("llama3", Some(p)) => {
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| format!("rope_type llama3 needs {name}"))
                };
                RopeScaling::Llama3 {
                    factor: need(p.factor, "factor")?,
                    low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: need(
                        p.original_max_position_embeddings,
                        "original_max_position_embeddings",
                    )?,
                }
            }
            (other, _) => {
                return Err(format!(
                    "rope_type {other:?} is not supported (supported: default, llama3)"
                ))
            }
        };
        let heads = file.num_attention_heads;
        let config = TextConfig {
            vocab_size: file.vocab_size,
            hidden_size: file.hidden_size,
            intermediate_size: file.intermediate_size,
            num_hidden_layers: file.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: file.num_key_value_heads.unwrap_or(heads),
            head_dim: file.head_dim.unwrap_or(file.hidden_size / heads.max(1)),
            hidden_act: file.hidden_act,
            rms_norm_eps: file.rms_norm_eps,
            rope: Rope { theta, scaling },
            sliding_window: file.sliding_window,
            tie_word_embeddings: file.tie_word_embeddings,
        };
        if config.num_key_value_heads == 0 || !heads.is_multiple_of(config.num_key_value_heads) {
            return Err("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        if config.head_dim == 0 || !config.head_dim.is_multiple_of(2) {
            return Err("head_dim must be even".into());
        }
        Ok(config)
    }
}

impl TextConfig {
    /// `text_config` of `root` over a family's class defaults; `tie_word_embeddings` falls
    /// back to the top-level one, as transformers reads it.
    pub fn from_root(root: &Value, mut defaults: Value, path: &Path) -> Result<Self, LoadError> {
        if let Some(tie) = root.get("tie_word_embeddings").filter(|v| v.is_boolean()) {
            defaults["tie_word_embeddings"] = tie.clone();
        }
        section(root, "text_config", defaults, path)
    }
}

/// What `generation_config.json` contributes to greedy decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationConfig {
    /// Any of these ends a sequence (Llama 3.1 lists four).
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

/// PIL convolution filters, by their `resample` number in the image-processor files
/// (nearest, 0, is not a convolution in Pillow and is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub enum Resample {
    /// 1: Idefics3.
    Lanczos,
    /// 2: Idefics2.
    Bilinear,
    /// 3.
    Bicubic,
    /// 4.
    Box,
    /// 5.
    Hamming,
}

impl TryFrom<u64> for Resample {
    type Error = String;

    fn try_from(n: u64) -> Result<Self, String> {
        match n {
            1 => Ok(Resample::Lanczos),
            2 => Ok(Resample::Bilinear),
            3 => Ok(Resample::Bicubic),
            4 => Ok(Resample::Box),
            5 => Ok(Resample::Hamming),
            _ => Err(format!("unsupported resample {n} (supported: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)")),
        }
    }
}

/// A per-channel value written as one number or three.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
enum PerChannel {
    One(f32),
    Three([f32; 3]),
}

impl From<PerChannel> for [f32; 3] {
    fn from(v: PerChannel) -> Self {
        match v {
            PerChannel::One(x) => [x; 3],
            PerChannel::Three(xs) => xs,
        }
    }
}

fn per_channel<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[f32; 3], D::Error> {
    PerChannel::deserialize(d).map(Into::into)
}

/// A per-channel divisor: checked here, once for every family, because a 0 would turn every
/// pixel of that channel into infinity.
fn nonzero_per_channel<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[f32; 3], D::Error> {
    let values = per_channel(d)?;
    if values.contains(&0.0) {
        return Err(serde::de::Error::custom("must not contain 0"));
    }
    Ok(values)
}

/// Rescale and normalization settings of an image processor (both families).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Normalization {
    /// Multiply levels by `rescale_factor`.
    pub do_rescale: bool,
    /// 1/255 in every known checkpoint.
    pub rescale_factor: f64,
    /// Subtract the mean and divide by the std.
    pub do_normalize: bool,
    /// Per-channel mean.
    #[serde(deserialize_with = "per_channel")]
    pub image_mean: [f32; 3],
    /// Per-channel std (never 0).
    #[serde(deserialize_with = "nonzero_per_channel")]
    pub image_std: [f32; 3],
}

/// The image-processor files of a checkpoint, oldest layout first: the flat
/// `preprocessor_config.json`, then `processor_config.json` and the `image_processor` object
/// transformers 5 nests in it. Later files win, as in transformers.
pub fn processor_files(dir: &Path) -> Result<Vec<(Value, std::path::PathBuf)>, LoadError> {
    let mut layers = Vec::new();
    for name in ["preprocessor_config.json", "processor_config.json"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let value = read_json(&path)?;
        let nested = value.get("image_processor").cloned();
        layers.push((value, path.clone()));
        if let Some(nested) = nested {
            layers.push((nested, path));
        }
    }
    Ok(layers)
}

/// [`layered`] over the files of [`processor_files`].
pub fn processor_config<T: DeserializeOwned>(dir: &Path, defaults: Value) -> Result<T, LoadError> {
    let files = processor_files(dir)?;
    let layers: Vec<(&Value, &Path)> = files.iter().map(|(v, p)| (v, p.as_path())).collect();
    if layers.is_empty() {
        return layered(
            defaults,
            &[(&Value::Null, &dir.join("processor_config.json"))],
        );
    }
    layered(defaults, &layers)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_zero_image_std_is_rejected_for_every_family() {
        let normalization = |std: Value| {
            serde_json::from_value::<Normalization>(json!({
                "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true,
                "image_mean": [0.5, 0.5, 0.5], "image_std": std,
            }))
        };
        assert!(normalization(json!([0.5, 0.5, 0.5])).is_ok());
        let error = normalization(json!([0.5, 0.0, 0.5]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("must not contain 0"), "{error}");
    }

    fn text(value: Value) -> Result<TextConfig, LoadError> {
        let defaults = json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "tie_word_embeddings": false,
        });
        TextConfig::from_root(
            &json!({ "text_config": value }),
            defaults,
            Path::new("c.json"),
        )
    }

    #[test]
    fn both_rope_layouts_give_the_same_config() {
        let hub = text(
            json!({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}}),
        )
        .unwrap();
        let v5 = text(
            json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5,
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}}),
        )
        .unwrap();
        assert_eq!(hub, v5);
        assert_eq!(hub.rope.theta, 5e5);
        assert!(matches!(hub.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        // Llama defaults: kv heads = heads, head_dim = hidden / heads.
        assert_eq!((hub.num_key_value_heads, hub.head_dim), (2, 4));
    }

    #[test]
    fn bad_settings_name_the_section_and_field() {
        let message = text(json!({"rope_parameters": {"rope_type": "yarn"}}))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("text_config") && message.contains("yarn"),
            "{message}"
        );
        let message = text(json!({"hidden_size": "wide"}))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("c.json") && message.contains("string"),
            "{message}"
        );
    }

    #[test]
    fn files_merge_nested_objects() {
        let mut base = json!({"size": {"shortest_edge": 378, "longest_edge": 980}, "a": 1});
        merge(
            &mut base,
            &json!({"size": {"longest_edge": 490}, "a": null}),
        );
        assert_eq!(
            base,
            json!({"size": {"shortest_edge": 378, "longest_edge": 490}, "a": 1})
        );
    }
}
