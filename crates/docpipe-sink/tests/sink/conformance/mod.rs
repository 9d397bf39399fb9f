//! The sink's storage conformance suite: each behaviour is written once over a
//! [`TestStore`](docpipe_testkit::TestStore) and run against `file://`, `memory://` and moto S3
//! by [`docpipe_testkit::conformance_tests!`]. The sink writes under [`SINK`] in each store.

mod claims;
mod dataset;
mod manifest;
mod parts;
mod resume;

use docpipe_sink::SinkOptions;
use docpipe_testkit::TestStore;

/// The sink location, relative to the store's root: a nested prefix that does not exist until
/// the first part is written.
const SINK: &str = "runs/today/";

/// The sink's URL in `store`.
fn sink_url(store: &TestStore) -> String {
    store.url(SINK)
}

/// An object under the sink, relative to the store's root (for [`TestStore`]'s helpers).
fn under_sink(relative: &str) -> String {
    format!("{SINK}{relative}")
}

/// Two documents per part, one key column.
fn options(store: &TestStore) -> SinkOptions {
    SinkOptions {
        key_columns: vec!["contract_id".into()],
        documents_per_part: 2,
        ..SinkOptions::new(sink_url(store))
    }
}
