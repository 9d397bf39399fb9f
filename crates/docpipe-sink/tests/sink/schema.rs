//! What the sink accepts, independent of where it writes: the output schema, and rows that
//! are one whole document. These touch no store, so they run once, not per backend.

use docpipe_sink::{columns, output_schema, Sink, SinkError, SinkOptions};
use docpipe_store::Stores;

use crate::rows::document_rows;

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
async fn rows_must_be_one_whole_document() {
    let options = SinkOptions {
        key_columns: vec!["contract_id".into()],
        ..SinkOptions::new("memory:///out/")
    };
    let mut sink = Sink::open(&Stores::default(), options).unwrap();
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
