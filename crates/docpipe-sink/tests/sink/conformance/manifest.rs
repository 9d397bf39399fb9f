//! A shard's run manifest and report: the manifest lists the shard's parts and is written
//! create-only, so a second completion of the same shard overwrites nothing.

use docpipe_core::Shard;
use docpipe_sink::{RunManifest, RunReport, Sink, SinkError, SinkOptions};
use docpipe_testkit::TestStore;

use super::{options, under_sink};
use crate::rows::document_rows;

async fn manifest_is_written_once_and_lists_the_parts(store: &TestStore) {
    let stores = store.stores();
    let shard = Shard::new(1, 3).unwrap();
    let mut sink = Sink::open(
        stores,
        SinkOptions {
            shard: Some(shard),
            ..options(store)
        },
    )
    .unwrap();
    for i in 0..3 {
        sink.commit_document(document_rows(&format!("/d/{i}.pdf"), "v", 2))
            .await
            .unwrap();
    }
    let mut report = RunReport::default();
    report.written.record(&document_rows("/d/0.pdf", "v", 1)[0]);
    sink.write_report(&report).await.unwrap();
    let manifest = sink
        .finish(RunManifest {
            run_id: "run-1".into(),
            model: "tiny@abc123".into(),
            ..RunManifest::default()
        })
        .await
        .unwrap();
    assert_eq!(manifest.parts.len(), 2);
    assert_eq!((manifest.rows, manifest.documents), (12, 3));
    assert_eq!(manifest.shard.as_deref(), Some("1/3"));
    assert!(manifest
        .parts
        .iter()
        .all(|p| p.path.starts_with("parts/shard-1-of-3-")));
    let written: RunManifest =
        serde_json::from_slice(&store.read(&under_sink("manifest-shard-1-of-3.json")).await)
            .unwrap();
    assert_eq!(written, manifest);
    let report_back: RunReport =
        serde_json::from_slice(&store.read(&under_sink("report-shard-1-of-3.json")).await).unwrap();
    assert_eq!(report_back, report);

    // A second completion of the same shard does not overwrite the manifest.
    let again = Sink::open(
        stores,
        SinkOptions {
            shard: Some(shard),
            ..options(store)
        },
    )
    .unwrap();
    let err = again.finish(RunManifest::default()).await.unwrap_err();
    assert!(matches!(err, SinkError::ManifestExists { .. }), "{err}");
    assert!(
        err.to_string().contains("manifest-shard-1-of-3.json"),
        "{err}"
    );
}

docpipe_testkit::conformance_tests!(manifest_is_written_once_and_lists_the_parts);
