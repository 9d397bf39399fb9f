//! The source's storage conformance suite: each behaviour is written once over a
//! [`TestStore`] and run against `file://`, `memory://` and moto S3 by
//! [`docpipe_testkit::conformance_tests!`].

mod fetch;
mod listing;
mod manifest;

use docpipe_testkit::TestStore;

/// The URI the source gives the document at `relative`: an absolute local path in a local
/// folder (the render workers take paths), the object's URL in any other store.
fn document_uri(store: &TestStore, relative: &str) -> String {
    store
        .local_path(relative)
        .map_or_else(|| store.url(relative), |path| path.display().to_string())
}

/// Writes each `(relative, body)` object.
async fn upload(store: &TestStore, files: &[(&str, &str)]) {
    for (relative, body) in files {
        store.put(relative, body.to_string()).await;
    }
}
