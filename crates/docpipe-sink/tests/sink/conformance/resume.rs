//! Resume: a new sink over the same location sees exactly the documents committed in parts
//! (buffered ones are lost with the process), and finishing a resumed run lists the parts of
//! every attempt.

use docpipe_core::DocumentRef;
use docpipe_sink::{read_rows, OutputRow, RunManifest, Sink, SinkError};
use docpipe_testkit::TestStore;

use super::{options, sink_url, under_sink};
use crate::rows::{document_rows, sorted};

fn doc(uri: &str, version: &str) -> DocumentRef {
    let mut doc = DocumentRef::new(uri);
    doc.version = Some(version.into());
    doc
}

async fn resume_sees_exactly_the_committed_documents(store: &TestStore) {
    let stores = store.stores();
    let mut sink = Sink::open(stores, options(store)).unwrap();
    assert_eq!(sink.committed().await.unwrap().document_count(), 0);
    for i in 0..3 {
        let rows = document_rows(&format!("/d/{i}.pdf"), "v1", 1);
        sink.commit_document(rows).await.unwrap();
    }
    // Documents 0 and 1 made a part; document 2 is buffered when the "crash" happens.
    drop(sink);

    let sink = Sink::open(stores, options(store)).unwrap();
    let committed = sink.committed().await.unwrap();
    assert_eq!(committed.document_count(), 2);
    assert_eq!(committed.row_count(), 4);
    assert_eq!(committed.parts().len(), 1);
    assert!(committed.contains(&doc("/d/0.pdf", "v1")));
    assert!(committed.contains(&doc("/d/1.pdf", "v1")));
    assert!(!committed.contains(&doc("/d/2.pdf", "v1")), "never flushed");
    assert!(!committed.contains(&doc("/d/0.pdf", "v2")), "changed since");
}

/// Writes four documents (two parts) and returns the rows written.
async fn write_documents(store: &TestStore) -> Result<Vec<OutputRow>, SinkError> {
    let mut sink = Sink::open(store.stores(), options(store))?;
    let mut written = Vec::new();
    for i in 0..4 {
        let rows = document_rows(&format!("s3://in/doc-{i}.pdf"), "etag-1", 2);
        written.extend(rows.clone());
        sink.commit_document(rows).await?;
    }
    assert!(sink.flush().await?.is_none(), "both parts already written");
    Ok(written)
}

async fn a_resumed_run_finishes_with_the_parts_of_every_attempt(store: &TestStore) {
    let stores = store.stores();
    let written = write_documents(store).await.unwrap();

    let rows = read_rows(stores, &sink_url(store)).await.unwrap();
    assert_eq!(sorted(rows), sorted(written));

    let mut sink = Sink::open(stores, options(store)).unwrap();
    let committed = sink.committed().await.unwrap();
    assert_eq!(committed.document_count(), 4);
    assert_eq!(committed.parts().len(), 2);
    assert!(committed.contains(&doc("s3://in/doc-3.pdf", "etag-1")));
    assert!(!committed.contains(&doc("s3://in/doc-3.pdf", "etag-2")));

    sink.commit_document(document_rows("s3://in/doc-9.pdf", "etag-1", 1))
        .await
        .unwrap();
    let manifest = sink
        .finish(RunManifest {
            run_id: "run-1".into(),
            ..RunManifest::default()
        })
        .await
        .unwrap();
    assert_eq!(manifest.parts.len(), 3);
    assert_eq!((manifest.documents, manifest.rows), (5, 4 * 4 + 2));

    let again = Sink::open(stores, options(store)).unwrap();
    let err = again.finish(RunManifest::default()).await.unwrap_err();
    assert!(matches!(err, SinkError::ManifestExists { .. }), "{err}");
    let url = store.url(&under_sink("manifest.json"));
    assert!(err.to_string().contains(&url), "{err}");
}

docpipe_testkit::conformance_tests!(
    resume_sees_exactly_the_committed_documents,
    a_resumed_run_finishes_with_the_parts_of_every_attempt,
);
