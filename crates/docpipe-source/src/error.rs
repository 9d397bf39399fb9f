//! The source's errors: [`SourceError`] when the listing as a whole fails (the run stops
//! before any work) and [`FetchError`] when one document cannot be fetched (that document
//! gets error rows of stage `source`, the run goes on).

use docpipe_store::StoreError;

/// Why the documents of a run could not be listed. Each variant names the location at fault.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source location, or the URI of a manifest entry, could not be opened as a store
    /// location.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listing source names a local folder that does not exist (object_store would list it
    /// as empty).
    #[error("source folder not found: {path}")]
    MissingFolder {
        /// The folder, as an absolute local path when it is one.
        path: String,
    },
    /// Listing the folder or prefix failed (after object_store's retries).
    #[error("cannot list {location}: {source}")]
    List {
        /// The folder or prefix being listed.
        location: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// An include glob of a listing source does not parse.
    #[error("invalid include pattern {pattern:?}: {source}")]
    Pattern {
        /// The glob as configured.
        pattern: String,
        /// What globset found wrong with it.
        #[source]
        source: globset::Error,
    },
    /// The manifest file could not be read from its store (absent, denied, unreachable).
    #[error("cannot read manifest {location}: {message}")]
    ReadManifest {
        /// The manifest.
        location: String,
        /// The store's error.
        message: String,
    },
    /// One entry of the manifest is malformed: a JSONL line that is not a JSON object, an
    /// empty or missing URI, or questions that do not parse.
    #[error("manifest {location}, line {line}: {message}")]
    ManifestLine {
        /// The manifest.
        location: String,
        /// 1-based line of a JSONL or CSV file (the CSV header is line 1), or 1-based row of a
        /// Parquet file.
        line: usize,
        /// What is wrong with the entry.
        message: String,
    },
    /// The manifest as a whole is unusable: unknown format, not valid CSV or Parquet, or a
    /// configured column missing or not readable as text.
    #[error("manifest {location}: {message}")]
    Manifest {
        /// The manifest.
        location: String,
        /// What is wrong with it.
        message: String,
    },
    /// Looking up a manifest entry's object for its version failed for another reason than
    /// its absence (an absent object is listed without a version instead).
    #[error("cannot look up document {uri}: {source}")]
    Head {
        /// The entry's resolved URI.
        uri: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
}

/// Why one document's bytes could not be made available as a local file. The pipeline turns
/// this into the document's error rows (stage `source`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The document's object or local file does not exist (e.g. a manifest entry naming a
    /// missing object, or a file deleted since the listing).
    #[error("document not found: {uri}")]
    NotFound {
        /// The document's URI.
        uri: String,
    },
    /// The object's etag no longer matches the listed version: it was replaced after the
    /// listing, so its output would be attributed to the wrong version. A rerun lists it anew.
    #[error("document {uri} changed since it was listed (version {version})")]
    Changed {
        /// The document's URI.
        uri: String,
        /// The version it was listed with.
        version: String,
    },
    /// The document's URI could not be opened as a store location.
    #[error("cannot open the store of {uri}: {source}")]
    Store {
        /// The document's URI.
        uri: String,
        /// Why the location could not be opened.
        #[source]
        source: StoreError,
    },
    /// Starting or streaming the download failed (after object_store's retries).
    #[error("cannot download {uri}: {source}")]
    Download {
        /// The document's URI.
        uri: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// The temporary copy could not be created or written (full or unwritable temporary
    /// folder).
    #[error("cannot write a local copy of {uri}: {source}")]
    Write {
        /// The document's URI.
        uri: String,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
}
