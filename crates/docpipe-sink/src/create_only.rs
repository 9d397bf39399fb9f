//! Manifests are written create-only: the store's conditional put lets exactly one of several
//! racing committers win, and a rerun never overwrites a finished manifest.

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
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match location.store().put_opts(path, body.into(), options).await {
        Ok(_) => Ok(Created::Written),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
        Err(e) => Err(error(e.to_string())),
    }
}
