//! The documents a run processes.
//!
//! A source is either a listing (a local folder or an object-store prefix, filtered by include
//! globs) or a manifest (JSONL, CSV or Parquet with a column of document URIs, optional key
//! columns carried into the output, optional per-document questions). Either way the result is a
//! deterministic list of [`DocumentRef`](docpipe_core::DocumentRef)s, each with a version (the
//! object's etag) so that resume can tell a committed document from a changed one.
//!
//! Versions are etags, not content hashes: they come with the listing for free. For local files
//! object_store derives the etag from inode, modification time and size, so touching or
//! replacing a file makes it a new version, which is the behaviour resume wants.
//!
//! Document URIs: objects listed from a remote prefix are full URLs (`s3://bucket/a/b.pdf`);
//! files listed from a local folder are absolute local paths; manifest entries are kept as
//! written, except that relative entries are resolved against the manifest's own folder.

#![warn(missing_docs)]

mod error;
mod fetch;
mod listing;
mod manifest;

pub use error::{FetchError, SourceError};
pub use fetch::{Fetcher, LocalCopy};
pub use listing::ListingSpec;
pub use manifest::{ManifestFormat, ManifestSpec};

use docpipe_core::{DocumentRef, Shard};
use docpipe_store::Stores;

/// Where a run's documents come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Every object under a folder or prefix that the include globs keep.
    Listing(ListingSpec),
    /// The entries of a JSONL, CSV or Parquet manifest.
    Manifest(ManifestSpec),
}

/// Lists the documents of `spec` that belong to `shard` (all of them when `None`).
///
/// Errors that make the whole listing meaningless (unreachable store, missing folder, malformed
/// manifest) are returned; a manifest entry whose object does not exist is listed without a
/// version and fails when it is fetched, so that it gets its own error row.
pub async fn list_documents(
    spec: &SourceSpec,
    stores: &Stores,
    shard: Option<Shard>,
) -> Result<Vec<DocumentRef>, SourceError> {
    match spec {
        SourceSpec::Listing(listing) => listing::list(listing, stores, shard).await,
        SourceSpec::Manifest(manifest) => manifest::list(manifest, stores, shard).await,
    }
}
