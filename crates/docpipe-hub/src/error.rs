//! [`HubError`]: why a checkpoint could not be resolved, in one line that names the origin
//! (`org/name@revision` or the bucket URL) and the file, and says whether the configuration or
//! the machine is at fault.

use std::path::PathBuf;

use docpipe_store::StoreError;

/// Why a checkpoint could not be resolved. [`HubError::is_usage`] tells configuration errors
/// (exit 2: fix the name, the token or the cache) from failures of the network or the machine
/// (exit 3: rerun, and downloads resume).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The location cannot name a checkpoint.
    #[error("invalid model location {location:?}: {reason}")]
    InvalidSource {
        /// As given.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The hub has no such model repository (and no local folder has that name).
    #[error(
        "{repo}@{revision}: not a local folder, and {endpoint} has no model repository {repo}"
    )]
    RepoNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The hub or mirror asked.
        endpoint: String,
    },
    /// The repository has no such branch, tag or commit.
    #[error("{repo}@{revision}: {endpoint} has no revision {revision:?} (branch, tag or commit) of {repo}")]
    RevisionNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The hub or mirror asked.
        endpoint: String,
    },
    /// A file the checkpoint needs is not there (docpipe reads `config.json`, `tokenizer.json`
    /// and safetensors weights, and every shard the index names).
    #[error("{origin}: {file}: not in the checkpoint, which needs it")]
    FileNotFound {
        /// `org/name@revision` or the bucket URL.
        origin: String,
        /// The missing file.
        file: String,
    },
    /// The hub refused access: a gated or private repository, and no token or one without
    /// access to it.
    #[error("{origin}: {file}: access denied (HTTP {status}): {hint}")]
    AccessDenied {
        /// `org/name@revision`.
        origin: String,
        /// The file (or the repository's info) asked for.
        file: String,
        /// 401 or 403.
        status: u16,
        /// What to do about it.
        hint: &'static str,
    },
    /// `HF_HUB_OFFLINE` is set and the cache lacks a file.
    #[error(
        "{origin}: {file}: not in the cache {} and HF_HUB_OFFLINE is set (unset it, or download \
         the checkpoint into this cache first)",
        cache.display()
    )]
    NotCached {
        /// `org/name@revision`.
        origin: String,
        /// The first missing file.
        file: String,
        /// The hub cache looked in.
        cache: PathBuf,
    },
    /// A file the checkpoint needs is not what docpipe can read (e.g. an index without a
    /// `weight_map`).
    #[error("{origin}: {file}: {message}")]
    Invalid {
        /// `org/name@revision` or the bucket URL.
        origin: String,
        /// The file.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// The hub could not be reached or kept failing (after retries).
    #[error("{origin}: {file}: cannot reach {endpoint}: {message}")]
    Unreachable {
        /// `org/name@revision`.
        origin: String,
        /// The file (or `model info`) being fetched.
        file: String,
        /// The hub or mirror.
        endpoint: String,
        /// The last failure.
        message: String,
    },
    /// A downloaded file does not match the hash or size the hub or store gave for it; it was
    /// discarded, and a rerun downloads it again.
    #[error("{origin}: {file}: downloaded bytes do not match the expected {expected} (got {actual}); discarded, rerun to download it again")]
    Corrupt {
        /// `org/name@revision` or the bucket URL.
        origin: String,
        /// The file.
        file: String,
        /// What the hub or store said (`sha256 …`, `git blob …`, `size …`).
        expected: String,
        /// What the bytes gave.
        actual: String,
    },
    /// An object-store prefix could not be opened, listed or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cache could not be written or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// True when the configuration is at fault (a wrong name, revision or token, a checkpoint
    /// docpipe cannot read, an offline cache without the files): exit 2. False when the
    /// network, the store or the disk failed: exit 3, and a rerun resumes the downloads.
    pub fn is_usage(&self) -> bool {
        match self {
            HubError::Store(e) => e.is_usage(),
            HubError::Unreachable { .. } | HubError::Corrupt { .. } | HubError::Io { .. } => false,
            _ => true,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { path, source }
    }
}
