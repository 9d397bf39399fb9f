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

#![warn(missing_docs)]

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
    /// The location string is empty or not a valid URL, names a store docpipe does not open
    /// (e.g. `http://`), or (in [`Location::join`]) is a relative path with empty, `.` or `..`
    /// segments.
    #[error("invalid storage location {location:?}: {reason}")]
    InvalidLocation {
        /// The location or relative path as given (user-info removed from URLs).
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// object_store does not recognise the URL's scheme, or the store's builder rejected its
    /// settings (from the URL, the environment or [`StoreOptions::config`]).
    #[error("cannot open the object store for {url}: {source}")]
    Open {
        /// The location's URL, user-info removed.
        url: String,
        /// object_store's reason.
        #[source]
        source: object_store::Error,
    },
    /// The object does not exist (a GET or HEAD answered not found).
    ///
    /// Kept apart from [`StoreError::Access`] so that callers can treat an absent input as
    /// a bad argument rather than a store failure.
    #[error("{location}: not found")]
    NotFound {
        /// The missing object, as [`Location::display`] names it.
        location: String,
    },
    /// A request to the store failed for another reason than a missing object (denied,
    /// unreachable, still failing after the retries of [`StoreOptions`]).
    #[error("{location}: {source}")]
    Access {
        /// The object or prefix, as [`Location::display`] names it.
        location: String,
        /// object_store's error, after its retries.
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
