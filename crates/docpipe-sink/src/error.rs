//! [`SinkError`]: what went wrong while writing or reading a sink. Each variant names the
//! object at fault; the pipeline decides from the variant whether the configuration (exit 2) or
//! the storage (exit 3) is to blame.

use docpipe_store::StoreError;

/// What went wrong while writing or reading a sink; each variant names the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink location cannot be opened as a store (a bad URL, or a store that cannot be
    /// configured from it and the environment).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rows handed over as one document are not one document's rows.
    #[error("invalid document rows: {0}")]
    InvalidRows(String),
    /// The configuration names key columns the output cannot have.
    #[error("invalid key column {name:?}: {reason}")]
    KeyColumn {
        /// The key column as configured.
        name: String,
        /// Empty, named like a standard output column, or listed twice.
        reason: String,
    },
    /// Uploading a part, a manifest or a report failed (after the store's retries).
    #[error("cannot write {url}: {message}")]
    Write {
        /// The object being written.
        url: String,
        /// The store's or the Parquet writer's error.
        message: String,
    },
    /// Listing the committed parts (or the shard manifests) failed.
    #[error("cannot list committed parts under {url}: {source}")]
    List {
        /// The folder being listed.
        url: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// A part or manifest could not be read back or decoded: the store failed, or the file is
    /// not a part this version of docpipe wrote.
    #[error("cannot read {url}: {message}")]
    Read {
        /// The object being read.
        url: String,
        /// The store's, Parquet's or the schema check's error.
        message: String,
    },
    /// `docpipe commit` cannot tell how many shards the dataset has.
    #[error("cannot tell the shard count of {url}: {reason}")]
    ShardCount {
        /// The sink location.
        url: String,
        /// No shard manifest yet, manifests that disagree, or `--shards 0`.
        reason: String,
    },
    /// The sink's store does not refuse a second create-only write, so runs overlapping on it
    /// cannot be kept from committing a document twice (see `sink.exclusive`).
    #[error(
        "{url}: the store does not honour create-only writes ({detail}); overlapping runs \
         cannot be made exclusive on it (set sink.exclusive = false to run without claims)"
    )]
    NoCreateOnly {
        /// The scratch object written twice.
        url: String,
        /// What the store did.
        detail: String,
    },
    /// A run manifest is already there: this run (or shard) was completed before.
    #[error("run manifest {url} already exists: this run was already completed")]
    ManifestExists {
        /// The existing manifest.
        url: String,
    },
}
