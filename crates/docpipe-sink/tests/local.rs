//! Writing, reading back and resuming a sink in a local folder.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::AsArray;
use common::document_rows;
use docpipe_core::DocumentRef;
use docpipe_sink::{
    columns, output_schema, read_batches, read_rows, OutputRow, RunManifest, RunReport, Sink,
    SinkError, SinkOptions,
};
use docpipe_source::Shard;
use docpipe_store::Stores;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn options(dir: &tempfile::TempDir) -> SinkOptions {
    SinkOptions {
        key_columns: vec!["contract_id".into()],
        documents_per_part: 2,
        ..SinkOptions::new(dir.path().to_str().unwrap())
    }
}

fn doc(uri: &str, version: &str) -> DocumentRef {
    let mut doc = DocumentRef::new(uri);
    doc.version = Some(version.into());
    doc
}

#[tokio::test]
async fn rows_round_trip_through_parts() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::default();
    let mut sink = Sink::open(&stores, options(&dir)).unwrap();
    let mut expected = Vec::new();
    let mut parts = Vec::new();
    for i in 0..5 {
        let rows = document_rows(&format!("s3://b/doc-{i}.pdf"), &format!("v{i}"), 3);
        expected.extend(rows.clone());
        parts.extend(sink.commit_document(rows).await.unwrap());
    }
    // Two documents per part: the fifth is still buffered until flushed.
    assert_eq!(parts.len(), 2);
    parts.extend(sink.flush().await.unwrap());
    assert_eq!(parts.len(), 3);
    assert_eq!(
        parts.iter().map(|p| p.documents).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    assert!(parts
        .iter()
        .all(|p| p.path.starts_with("parts/all-") && p.bytes > 0));

    let batches = read_batches(&stores, dir.path().to_str().unwrap())
        .await
        .unwrap();
    let schema = output_schema(&["contract_id".into()]).unwrap();
    for batch in &batches {
        assert_eq!(batch.schema(), schema);
    }
    let rows = read_rows(&stores, dir.path().to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(rows.len(), 5 * 3 * 2);
    let mut sorted = rows.clone();
    let key = |r: &OutputRow| (r.doc_uri.clone(), r.page, r.question_id.clone());
    sorted.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(sorted, expected);

    // Each document's rows are all in one part.
    let mut part_of: HashMap<String, usize> = HashMap::new();
    for (index, part) in parts.iter().enumerate() {
        let file = std::fs::File::open(dir.path().join(&part.path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut rows_in_part = 0;
        for batch in reader {
            let batch = batch.unwrap();
            rows_in_part += batch.num_rows();
            let uris = batch
                .column_by_name(columns::DOC_URI)
                .unwrap()
                .as_string::<i32>();
            for uri in uris.iter().flatten() {
                assert_eq!(
                    *part_of.entry(uri.to_owned()).or_insert(index),
                    index,
                    "{uri}"
                );
            }
        }
        assert_eq!(rows_in_part as u64, part.rows);
    }
    assert_eq!(part_of.len(), 5);
}

#[test]
fn schema_matches_the_design() {
    let schema = output_schema(&["tenant".into()]).unwrap();
    let described: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect();
    assert_eq!(
        described,
        [
            "tenant:Utf8",
            "run_id:Utf8",
            "doc_uri:Utf8",
            "doc_version:Utf8",
            "page:UInt32",
            "page_count:UInt32",
            "task:Utf8",
            "question_id:Utf8",
            "question:Utf8",
            "answer:Utf8",
            "fields:Utf8",
            "finish_reason:Utf8",
            "prompt_tokens:UInt32",
            "answer_tokens:UInt32",
            "latency_ms:Float32",
            "model:Utf8",
            "error_stage:Utf8",
            "error:Utf8",
            "created_at:Timestamp(µs, \"UTC\")",
        ]
    );
    for bad in [vec!["answer".to_owned()], vec!["k".into(), "k".into()]] {
        let err = output_schema(&bad).unwrap_err();
        assert!(matches!(err, SinkError::KeyColumn { .. }), "{err}");
    }
    assert_eq!(columns::ALL.len() + 1, schema.fields().len());
}

#[tokio::test]
async fn resume_sees_exactly_the_committed_documents() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::default();
    let mut sink = Sink::open(&stores, options(&dir)).unwrap();
    assert_eq!(sink.committed().await.unwrap().document_count(), 0);
    for i in 0..3 {
        let rows = document_rows(&format!("/d/{i}.pdf"), "v1", 1);
        sink.commit_document(rows).await.unwrap();
    }
    // Documents 0 and 1 made a part; document 2 is buffered when the "crash" happens.
    drop(sink);

    let sink = Sink::open(&stores, options(&dir)).unwrap();
    let committed = sink.committed().await.unwrap();
    assert_eq!(committed.document_count(), 2);
    assert_eq!(committed.row_count(), 4);
    assert_eq!(committed.parts().len(), 1);
    assert!(committed.contains(&doc("/d/0.pdf", "v1")));
    assert!(committed.contains(&doc("/d/1.pdf", "v1")));
    assert!(!committed.contains(&doc("/d/2.pdf", "v1")), "never flushed");
    assert!(!committed.contains(&doc("/d/0.pdf", "v2")), "changed since");
}

#[tokio::test]
async fn manifest_is_written_once_and_lists_the_parts() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::default();
    let shard = Shard::new(1, 3).unwrap();
    let mut sink = Sink::open(
        &stores,
        SinkOptions {
            shard: Some(shard),
            ..options(&dir)
        },
    )
    .unwrap();
    for i in 0..3 {
        sink.commit_document(document_rows(&format!("/d/{i}.pdf"), "v", 2))
            .await
            .unwrap();
    }
    let mut report = RunReport::default();
    report.record(&document_rows("/d/0.pdf", "v", 1)[0]);
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
    let written: RunManifest = serde_json::from_slice(
        &std::fs::read(dir.path().join("manifest-shard-1-of-3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written, manifest);
    let report_back: RunReport = serde_json::from_slice(
        &std::fs::read(dir.path().join("report-shard-1-of-3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report_back, report);

    // A second completion of the same shard does not overwrite the manifest.
    let again = Sink::open(
        &stores,
        SinkOptions {
            shard: Some(shard),
            ..options(&dir)
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

#[tokio::test]
async fn rows_must_be_one_whole_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::open(&Stores::default(), options(&dir)).unwrap();
    let err = sink.commit_document(Vec::new()).await.unwrap_err();
    assert!(matches!(err, SinkError::InvalidRows(_)), "{err}");
    let mut mixed = document_rows("/d/a.pdf", "v", 1);
    mixed.extend(document_rows("/d/b.pdf", "v", 1));
    let err = sink.commit_document(mixed).await.unwrap_err();
    assert!(err.to_string().contains("/d/b.pdf"), "{err}");
    assert!(
        sink.flush().await.unwrap().is_none(),
        "nothing was buffered"
    );
}

#[tokio::test]
async fn documents_waiting_too_long_are_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Sink::open(
        &Stores::default(),
        SinkOptions {
            documents_per_part: 100,
            part_max_age: Duration::ZERO,
            ..options(&dir)
        },
    )
    .unwrap();
    assert!(sink.flush_deadline().is_none());
    let part = sink
        .commit_document(document_rows("/d/a.pdf", "v", 1))
        .await
        .unwrap();
    assert_eq!(part.map(|p| p.documents), Some(1));
    assert!(sink.flush_deadline().is_none());
}
