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
    #[error("{path}: unsupported model_type {found:?} (supported: {supported})")]
    UnsupportedModelType {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: chat template: {message}")]
    Template { path: PathBuf, message: String },
    #[error("{0}")]
    Device(String),
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
