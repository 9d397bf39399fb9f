//! Create-only writes: the store's conditional put lets exactly one of several racing writers
//! win. Manifests, parts and claim-log entries are all written this way, so a rerun never
//! overwrites a finished manifest and two runs never both commit a document.

use bytes::Bytes;
use docpipe_store::Location;
use object_store::path::Path;
use object_store::{PutMode, PutOptions};
use serde::Serialize;

use crate::SinkError;

/// What a create-only write found.
pub(crate) enum Created {
    Written,
    AlreadyExists,
}

/// Writes `body` at `path` unless an object is already there; other store errors are returned
/// as they are, for the caller to name.
pub(crate) async fn put_create_only(
    location: &Location,
    path: &Path,
    body: Bytes,
) -> Result<Created, object_store::Error> {
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match location.store().put_opts(path, body.into(), options).await {
        Ok(_) => Ok(Created::Written),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
        Err(e) => Err(e),
    }
}

/// Writes `value` as pretty JSON at `path` unless an object is already there.
pub(crate) async fn put_json_create_only(
    location: &Location,
    path: &Path,
    value: &impl Serialize,
) -> Result<Created, SinkError> {
    let error = |message: String| SinkError::Write {
        url: location.url_of(path).to_string(),
        message,
    };
    let body = serde_json::to_vec_pretty(value).map_err(|e| error(e.to_string()))?;
    put_create_only(location, path, body.into())
        .await
        .map_err(|e| error(e.to_string()))
}
