//! [`SinkError`]: what went wrong while writing or reading a sink. Each variant names the
//! object at fault; the pipeline decides from the variant whether the configuration (exit 2) or
//! the storage (exit 3) is to blame.

use docpipe_store::StoreError;

/// What went wrong while writing or reading a sink; each variant names the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rows handed over as one document are not one document's rows.
    #[error("invalid document rows: {0}")]
    InvalidRows(String),
    /// The configuration names key columns the output cannot have.
    #[error("invalid key column {name:?}: {reason}")]
    KeyColumn { name: String, reason: String },
    #[error("cannot write {url}: {message}")]
    Write { url: String, message: String },
    #[error("cannot list committed parts under {url}: {source}")]
    List {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot read {url}: {message}")]
    Read { url: String, message: String },
    /// `docpipe commit` cannot tell how many shards the dataset has.
    #[error("cannot tell the shard count of {url}: {reason}")]
    ShardCount { url: String, reason: String },
    /// A run manifest is already there: this run (or shard) was completed before.
    #[error("run manifest {url} already exists: this run was already completed")]
    ManifestExists { url: String },
}
