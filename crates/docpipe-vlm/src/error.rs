//! The crate's error types, one per step a user can get wrong or a machine can fail at:
//! loading a checkpoint, reading an image, building a prompt, preprocessing, choosing a device.
//! Each names the file or value at fault, because the CLI prints it as the one line a user sees.

use std::path::PathBuf;

/// Why a checkpoint could not be loaded. Every variant names the file it concerns, because the
/// CLI prints this as the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: model_type {found:?} is not {}", crate::config::MODEL_TYPE)]
    UnsupportedModelType { path: PathBuf, found: String },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: chat template: {message}")]
    Template { path: PathBuf, message: String },
    /// Moving weights onto the device failed (out of memory, a lost device).
    #[error("{0}")]
    Device(candle_core::Error),
}

impl LoadError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
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
    pub path: PathBuf,
    pub message: String,
}

/// Why a chat request could not be turned into model inputs. The pool turns it into that
/// request's error row (`ModelError::InvalidRequest`), never a replica failure.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("the message list is empty")]
    NoMessages,
    #[error("{template}: {source}")]
    Template {
        template: PathBuf,
        source: minijinja::Error,
    },
    #[error("the prompt has {markers} <image> markers but the request has {images} images")]
    ImageCount { markers: usize, images: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(tokenizers::Error),
}

/// Why an image could not be preprocessed into crops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image has no pixels")]
    Empty,
    #[error("image of {width}x{height} is too small to split")]
    TooSmallToSplit { width: u32, height: u32 },
    #[error("an image of {width}x{height} gives a {crop_width}x{crop_height} crop, smaller than one {patch}x{patch} patch")]
    SmallerThanPatch {
        width: u32,
        height: u32,
        crop_width: usize,
        crop_height: usize,
        patch: usize,
    },
}

/// A device or dtype the checkpoint cannot be loaded on.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cuda:all must be expanded into cuda:N devices before a model is loaded")]
    NotExpanded,
    #[error("device {0} needs a build with the `cuda` cargo feature (scripts/build-cuda.sh)")]
    NoCudaBuild(docpipe_core::DeviceSpec),
    #[error("{device}: {source}")]
    Unavailable {
        device: docpipe_core::DeviceSpec,
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
