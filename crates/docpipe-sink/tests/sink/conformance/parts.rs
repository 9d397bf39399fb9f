//! Parts: documents are written together as Parquet parts, one document never spans two, and
//! a slow run still writes its documents once they have waited long enough.

use std::collections::HashMap;
use std::time::Duration;

use arrow::array::AsArray;
use docpipe_sink::{columns, output_schema, read_batches, read_rows, Sink, SinkOptions};
use docpipe_testkit::TestStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{options, sink_url, under_sink};
use crate::rows::{document_rows, sorted};

async fn rows_round_trip_through_parts(store: &TestStore) {
    let stores = store.stores();
    let mut sink = Sink::open(stores, options(store)).unwrap();
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

    let batches = read_batches(stores, &sink_url(store)).await.unwrap();
    let schema = output_schema(&["contract_id".into()]).unwrap();
    for batch in &batches {
        assert_eq!(batch.schema(), schema);
    }
    let rows = read_rows(stores, &sink_url(store)).await.unwrap();
    assert_eq!(rows.len(), 5 * 3 * 2);
    assert_eq!(sorted(rows), sorted(expected));

    // Each document's rows are all in one part.
    let mut part_of: HashMap<String, usize> = HashMap::new();
    for (index, part) in parts.iter().enumerate() {
        let bytes = store.read(&under_sink(&part.path)).await;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
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

async fn documents_waiting_too_long_are_flushed(store: &TestStore) {
    let mut sink = Sink::open(
        store.stores(),
        SinkOptions {
            documents_per_part: 100,
            part_max_age: Duration::ZERO,
            ..options(store)
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

docpipe_testkit::conformance_tests!(
    rows_round_trip_through_parts,
    documents_waiting_too_long_are_flushed,
);
