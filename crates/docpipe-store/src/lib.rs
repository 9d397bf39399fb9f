//! Opening object stores from the URLs that pipelines name.
//!
//! Every stage that reads or writes data takes a location string: a local path (relative paths
//! are made absolute against the working directory) or a `file://`, `s3://`, `gs://`, `az://`
//! or `memory://` URL. Credentials, endpoints and regions come only from the standard
//! environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) so that pipeline files never hold
//! secrets; error messages name locations with any user-info stripped.
//!
//! Transient failures (HTTP 5xx, 429, timeouts, dropped connections) are retried by
//! object_store's own client with the settings in [`StoreOptions`], which are explicit here
//! rather than inherited so that a run's tolerance to a flaky store is documented and testable.

mod location;
mod options;
mod parquet_file;
mod stores;

pub use location::{to_url, Location};
pub use options::StoreOptions;
pub use parquet_file::ParquetObjectFile;
pub use stores::Stores;

pub use object_store;

/// Why a location could not be turned into a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid storage location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("cannot open the object store for {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: object_store::Error,
    },
    /// Kept apart from [`StoreError::Access`] so that callers can treat an absent input as
    /// a bad argument rather than a store failure.
    #[error("{location}: not found")]
    NotFound { location: String },
    #[error("{location}: {source}")]
    Access {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

impl StoreError {
    /// True when the caller's input is at fault (a bad URL, a store that cannot be configured
    /// from it, an absent object) rather than the storage being unreachable, which a retry may
    /// fix. Commands map the first to exit 2 and the second to exit 3.
    pub fn is_usage(&self) -> bool {
        !matches!(self, StoreError::Access { .. })
    }
}
