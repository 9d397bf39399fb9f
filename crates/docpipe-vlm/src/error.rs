//! The error types of the model families, one per step a user can get wrong or a machine can
//! fail at: loading a checkpoint, reading an image, building a prompt, preprocessing, choosing
//! a device. Each names the file or value at fault, because the CLI prints it as the one line a
//! user sees.

use std::path::PathBuf;

/// Why a checkpoint could not be loaded. Every variant names the file it concerns, because the
/// CLI prints this as the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// A setting is missing, of the wrong type or out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file holding the setting.
        path: PathBuf,
        /// Which setting and why.
        message: String,
    },
    /// `config.json` names another architecture than the family asked to load it.
    #[error("{path}: model_type {found:?} is not {expected}")]
    UnsupportedModelType {
        /// The `config.json`.
        path: PathBuf,
        /// Its `model_type`.
        found: String,
        /// The family's `model_type`.
        expected: &'static str,
    },
    /// A weights file is missing, corrupt, or lacks or misshapes a tensor.
    #[error("{path}: {message}")]
    Weights {
        /// The safetensors file holding the tensor (or the index / directory when it is absent).
        path: PathBuf,
        /// Which tensor and why.
        message: String,
    },
    /// `tokenizer.json` is missing, unreadable or lacks a token the model needs.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The chat template is missing or does not compile.
    #[error("{path}: chat template: {message}")]
    Template {
        /// The file the template was read from (or the checkpoint directory).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Moving weights onto the device failed (out of memory, a lost device).
    #[error("{0}")]
    Device(candle_core::Error),
}

impl LoadError {
    /// A [`LoadError::Invalid`] about the file at `path`.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ImageLoadError {
    /// The image file.
    pub path: PathBuf,
    /// What the decoder said.
    pub message: String,
}

/// Why a chat request could not be turned into model inputs. The pool turns it into that
/// request's error row (`ModelError::InvalidRequest`), never a replica failure.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// The request has no messages.
    #[error("the message list is empty")]
    NoMessages,
    /// The chat template failed on these messages.
    #[error("{template}: {source}")]
    Template {
        /// Where the template was read from.
        template: PathBuf,
        /// What minijinja said.
        source: minijinja::Error,
    },
    /// The rendered prompt's `<image>` markers and the request's images disagree.
    #[error("the prompt has {markers} <image> markers but the request has {images} images")]
    ImageCount {
        /// `<image>` markers in the rendered prompt.
        markers: usize,
        /// Images attached to the request.
        images: usize,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(tokenizers::Error),
}

/// Why an image could not be preprocessed into crops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Zero width or height.
    #[error("image has no pixels")]
    Empty,
    /// A split would give an empty crop.
    #[error("image of {width}x{height} is too small to split")]
    TooSmallToSplit {
        /// Input width.
        width: u32,
        /// Input height.
        height: u32,
    },
    /// A crop has no complete vision patch.
    #[error("an image of {width}x{height} gives a {crop_width}x{crop_height} crop, smaller than one {patch}x{patch} patch")]
    SmallerThanPatch {
        /// Input width.
        width: u32,
        /// Input height.
        height: u32,
        /// The crop's width.
        crop_width: usize,
        /// The crop's height.
        crop_height: usize,
        /// The vision patch side.
        patch: usize,
    },
}

/// A device or dtype the checkpoint cannot be loaded on.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `cuda:all` reached a model unexpanded.
    #[error("cuda:all must be expanded into cuda:N devices before a model is loaded")]
    NotExpanded,
    /// A GPU was asked of a CPU-only build.
    #[error("device {0} needs a build with the `cuda` cargo feature (scripts/build-cuda.sh)")]
    NoCudaBuild(docpipe_core::DeviceSpec),
    /// The GPU exists in the build but could not be opened.
    #[error("{device}: {source}")]
    Unavailable {
        /// The device asked for.
        device: docpipe_core::DeviceSpec,
        /// What CUDA said.
        source: candle_core::Error,
    },
}

impl DeviceError {
    /// True when the request itself is wrong for this build (exit 2); false when the device
    /// exists in principle but could not be opened on this machine (exit 3).
    pub fn is_usage(&self) -> bool {
        !matches!(self, DeviceError::Unavailable { .. })
    }
}
