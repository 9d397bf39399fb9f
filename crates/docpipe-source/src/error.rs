//! The source's errors: [`SourceError`] when the listing as a whole fails (the run stops
//! before any work) and [`FetchError`] when one document cannot be fetched (that document
//! gets error rows of stage `source`, the run goes on).

use docpipe_store::StoreError;

/// Why the documents of a run could not be listed. Each variant names the location at fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("source folder not found: {path}")]
    MissingFolder { path: String },
    #[error("cannot list {location}: {source}")]
    List {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("invalid include pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("cannot read manifest {location}: {message}")]
    ReadManifest { location: String, message: String },
    #[error("manifest {location}, line {line}: {message}")]
    ManifestLine {
        location: String,
        line: usize,
        message: String,
    },
    #[error("manifest {location}: {message}")]
    Manifest { location: String, message: String },
    #[error("cannot look up document {uri}: {source}")]
    Head {
        uri: String,
        #[source]
        source: object_store::Error,
    },
}

/// Why one document's bytes could not be made available as a local file. The pipeline turns
/// this into the document's error rows (stage `source`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("document not found: {uri}")]
    NotFound { uri: String },
    #[error("document {uri} changed since it was listed (version {version})")]
    Changed { uri: String, version: String },
    #[error("cannot open the store of {uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot download {uri}: {source}")]
    Download {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot write a local copy of {uri}: {source}")]
    Write {
        uri: String,
        #[source]
        source: std::io::Error,
    },
}
