//! Where a checkpoint comes from: `model.path` and `docpipe generate --model` name a local
//! folder, a Hugging Face hub id (`org/name`, `org/name@REVISION`) or an object-store prefix
//! (`s3://…/`, `gs://…/`, `az://…/`). [`resolve`] turns any of them into a local folder holding
//! the checkpoint files, plus the name the `model` column gives the weights.
//!
//! Hub ids follow Python's `huggingface_hub` conventions, so the cache is shared with it and with
//! every tool built on it: `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN` (and the token file),
//! `HF_ENDPOINT` and `HF_HUB_OFFLINE` mean what they mean there ([`Settings`]), and the cache has
//! the `models--org--name/{blobs,refs,snapshots}` layout of the `hf-hub` crate. Only the files a
//! checkpoint needs are fetched (configs, tokenizer, chat template, safetensors), each verified
//! against the hub's hashes.
//!
//! Object-store prefixes are listed and copied into a cache of docpipe's own, keyed by the
//! objects' etags, so a second run or a second process on the machine downloads nothing.
//!
//! Resolution is blocking (downloads can take minutes); call it once per run, before the model
//! replicas load, so that they all share one download.

#![warn(missing_docs)]

mod bucket;
mod error;
mod files;
mod hub;
mod settings;
mod source;
mod verify;

use std::path::{Path, PathBuf};

pub use error::HubError;
pub use settings::Settings;
pub use source::ModelSource;

/// A checkpoint on the local disk, and what to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    dir: PathBuf,
    model_id: Option<String>,
}

impl Checkpoint {
    /// The folder holding `config.json`, the tokenizer files and the safetensors weights (for a
    /// hub id, the cache's snapshot folder of the resolved commit).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the `model` column calls these weights when their origin names them better than
    /// their folder does: `org/name@<commit>` for the hub, `<url>@<hash of the etags>` for an
    /// object store. `None` for a local folder, which the model names by its folder and a hash
    /// of its files.
    pub fn model_id(&self) -> Option<&str> {
        self.model_id.as_deref()
    }
}

/// Resolves a `model.path` / `--model` value with the settings of the environment: downloads
/// what is missing, then returns the local folder. Blocking.
pub fn resolve(location: &str) -> Result<Checkpoint, HubError> {
    resolve_with(&ModelSource::parse(location)?, &Settings::from_env())
}

/// [`resolve`] with explicit settings (tests, embedding programs).
pub fn resolve_with(source: &ModelSource, settings: &Settings) -> Result<Checkpoint, HubError> {
    match source {
        ModelSource::Local(dir) => Ok(Checkpoint {
            dir: dir.clone(),
            model_id: None,
        }),
        ModelSource::Hub { repo, revision } => hub::resolve(repo, revision, settings),
        ModelSource::Bucket(url) => bucket::resolve(url, settings),
    }
}
