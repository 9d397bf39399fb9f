//! Manifest sources (JSONL, CSV, Parquet) read from the store: entries with questions, keys
//! and versions, relative entries resolved against the manifest's folder, and malformed or
//! missing manifests named by location and line.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Fields};
use docpipe_core::{DocumentRef, Question, Shard};
use docpipe_source::{list_documents, ManifestSpec, SourceError, SourceSpec};
use docpipe_testkit::TestStore;
use parquet::arrow::ArrowWriter;

use super::{document_uri, upload};

fn question(id: &str, text: &str) -> Question {
    Question {
        id: id.into(),
        text: text.into(),
    }
}

async fn list(store: &TestStore, spec: ManifestSpec) -> Result<Vec<DocumentRef>, SourceError> {
    list_documents(&SourceSpec::Manifest(spec), store.stores(), None).await
}

async fn jsonl_entries_carry_questions_keys_and_versions(store: &TestStore) {
    upload(
        store,
        &[
            ("docs/a.pdf", "aaaa"),
            (
                "manifest.jsonl",
                concat!(
                    r#"{"uri": "docs/a.pdf", "questions": [{"id": "q1", "question": "Total?"}, {"id": 7, "text": "Date?"}], "tenant": "acme", "n": 3}"#,
                    "\n\n",
                    r#"{"uri": "s3://bucket/b.pdf"}"#,
                    "\n",
                    r#"{"uri": "docs/missing.pdf", "tenant": null}"#,
                    "\n",
                ),
            ),
        ],
    )
    .await;
    let spec = ManifestSpec {
        key_columns: vec!["tenant".into(), "n".into()],
        resolve_versions: false,
        ..ManifestSpec::new(store.url("manifest.jsonl"))
    };
    let docs = list(store, spec.clone()).await.unwrap();
    let uris: Vec<&str> = docs.iter().map(|d| d.uri.as_str()).collect();
    let present = document_uri(store, "docs/a.pdf");
    let missing = document_uri(store, "docs/missing.pdf");
    assert_eq!(
        uris,
        [present.as_str(), "s3://bucket/b.pdf", missing.as_str()]
    );
    assert_eq!(
        docs[0].questions,
        [question("q1", "Total?"), question("7", "Date?")]
    );
    assert_eq!(docs[0].keys.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(docs[0].keys.get("n").map(String::as_str), Some("3"));
    assert!(docs[1].questions.is_empty() && docs[1].keys.is_empty());
    assert!(docs[2].keys.is_empty(), "null keys are absent");

    // With versions resolved: the existing object gets its etag and size, the missing one none.
    upload(
        store,
        &[(
            "local.jsonl",
            "{\"uri\": \"docs/a.pdf\"}\n{\"uri\": \"docs/missing.pdf\"}\n",
        )],
    )
    .await;
    let docs = list(store, ManifestSpec::new(store.url("local.jsonl")))
        .await
        .unwrap();
    assert!(docs[0].version.is_some());
    assert_eq!(docs[0].size, Some(4));
    assert_eq!((docs[1].version.as_ref(), docs[1].size), (None, None));
}

async fn relative_and_absolute_entries_resolve_their_versions(store: &TestStore) {
    let absent = store.url("m/files/none.pdf");
    let manifest = format!(
        "{{\"uri\": \"files/a.pdf\", \"id\": \"A\"}}\n{{\"uri\": \"{absent}\", \"id\": \"B\"}}\n"
    );
    upload(
        store,
        &[("m/files/a.pdf", "aaaa"), ("m/manifest.jsonl", &manifest)],
    )
    .await;
    let spec = ManifestSpec {
        key_columns: vec!["id".into()],
        ..ManifestSpec::new(store.url("m/manifest.jsonl"))
    };
    let docs = list(store, spec).await.unwrap();
    assert_eq!(docs[0].uri, document_uri(store, "m/files/a.pdf"));
    assert_eq!(docs[0].size, Some(4));
    assert!(docs[0].version.is_some());
    assert_eq!(docs[0].keys.get("id").map(String::as_str), Some("A"));
    assert_eq!(docs[1].uri, absent, "absolute entries are kept as written");
    assert_eq!(
        docs[1].version, None,
        "a missing object is listed without a version"
    );
}

async fn malformed_jsonl_lines_are_named_by_file_and_line(store: &TestStore) {
    let cases = [
        ("{\"uri\": \"a.pdf\"}\n{\"uri\": \"b.pdf\"\n", 2, "EOF"),
        ("{\"uri\": \"a.pdf\"}\n\n[1, 2]\n", 3, "JSON object"),
        ("{\"url\": \"a.pdf\"}\n", 1, "\"uri\""),
        (
            "{\"uri\": \"a.pdf\", \"questions\": [{\"id\": \"x\"}]}\n",
            1,
            "questions",
        ),
    ];
    for (content, line, hint) in cases {
        upload(store, &[("bad.jsonl", content)]).await;
        let err = list(store, ManifestSpec::new(store.url("bad.jsonl")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SourceError::ManifestLine { line: l, .. } if l == line),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("bad.jsonl"), "{message}");
        assert!(message.contains(&format!("line {line}")), "{message}");
        assert!(message.contains(hint), "{message}");
    }
}

async fn missing_manifest_and_unknown_format_are_errors(store: &TestStore) {
    let err = list(store, ManifestSpec::new(store.url("nope.jsonl")))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::ReadManifest { .. }), "{err}");
    assert!(err.to_string().contains("nope.jsonl"), "{err}");

    upload(store, &[("manifest.txt", "x")]).await;
    let err = list(store, ManifestSpec::new(store.url("manifest.txt")))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Manifest { .. }), "{err}");
}

/// Writes a one-batch Parquet file at `relative`.
async fn put_parquet(store: &TestStore, relative: &str, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut file = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    store.put(relative, file).await;
}

async fn parquet_manifest_with_keys_and_structured_questions(store: &TestStore) {
    let fields = Fields::from(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("text", DataType::Utf8, true),
    ]);
    let mut questions = ListBuilder::new(StructBuilder::from_fields(fields, 2));
    for row in [Some(("q1", "Who?")), None, None] {
        if let Some((id, text)) = row {
            let item = questions.values();
            item.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(id);
            item.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(text);
            item.append(true);
            questions.append(true);
        } else {
            questions.append(false);
        }
    }
    put_parquet(
        store,
        "documents.parquet",
        vec![
            (
                "contract_id",
                Arc::new(Int64Array::from(vec![Some(10), Some(11), None])) as ArrayRef,
            ),
            (
                "document_uri",
                Arc::new(StringArray::from(vec![
                    "s3://b/x.pdf",
                    "s3://b/y.pdf",
                    "s3://b/z.pdf",
                ])),
            ),
            ("ignored", Arc::new(StringArray::from(vec!["1", "2", "3"]))),
            ("questions", Arc::new(questions.finish())),
        ],
    )
    .await;
    let spec = ManifestSpec {
        uri_column: "document_uri".into(),
        key_columns: vec!["contract_id".into()],
        questions_column: Some("questions".into()),
        resolve_versions: false,
        ..ManifestSpec::new(store.url("documents.parquet"))
    };
    let docs = list(store, spec.clone()).await.unwrap();
    let uris: Vec<&str> = docs.iter().map(|d| d.uri.as_str()).collect();
    assert_eq!(uris, ["s3://b/x.pdf", "s3://b/y.pdf", "s3://b/z.pdf"]);
    let keys: Vec<Option<&str>> = docs
        .iter()
        .map(|d| d.keys.get("contract_id").map(String::as_str))
        .collect();
    assert_eq!(keys, [Some("10"), Some("11"), None]);
    assert_eq!(docs[0].questions, [question("q1", "Who?")]);
    assert!(docs[1].questions.is_empty());

    // Sharding keeps exactly the owned entries, in manifest order.
    let shard = Shard::new(1, 2).unwrap();
    let owned = list_documents(
        &SourceSpec::Manifest(spec.clone()),
        store.stores(),
        Some(shard),
    )
    .await
    .unwrap();
    let expected: Vec<_> = docs
        .iter()
        .filter(|d| shard.owns(&d.uri))
        .cloned()
        .collect();
    assert_eq!(owned, expected);

    let err = list(
        store,
        ManifestSpec {
            key_columns: vec!["customer_id".into()],
            ..spec
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("customer_id"), "{err}");
}

async fn parquet_manifest_with_a_null_uri_names_the_row(store: &TestStore) {
    put_parquet(
        store,
        "m.parquet",
        vec![(
            "uri",
            Arc::new(StringArray::from(vec![Some("s3://b/x.pdf"), None])) as ArrayRef,
        )],
    )
    .await;
    let err = list(store, ManifestSpec::new(store.url("m.parquet")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::ManifestLine { line: 2, .. }),
        "{err}"
    );
}

async fn csv_manifest_keeps_keys_as_text(store: &TestStore) {
    upload(
        store,
        &[(
            "m.csv",
            "uri,account,questions\ns3://b/x.pdf,007,\"[{\"\"id\"\": \"\"a\"\", \"\"text\"\": \"\"Who?\"\"}]\"\ns3://b/y.pdf,,\n",
        )],
    )
    .await;
    let spec = ManifestSpec {
        key_columns: vec!["account".into()],
        questions_column: Some("questions".into()),
        resolve_versions: false,
        ..ManifestSpec::new(store.url("m.csv"))
    };
    let docs = list(store, spec).await.unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].keys.get("account").map(String::as_str), Some("007"));
    assert_eq!(docs[0].questions, [question("a", "Who?")]);
    assert!(docs[1].questions.is_empty());
}

docpipe_testkit::conformance_tests!(
    jsonl_entries_carry_questions_keys_and_versions,
    relative_and_absolute_entries_resolve_their_versions,
    malformed_jsonl_lines_are_named_by_file_and_line,
    missing_manifest_and_unknown_format_are_errors,
    parquet_manifest_with_keys_and_structured_questions,
    parquet_manifest_with_a_null_uri_names_the_row,
    csv_manifest_keeps_keys_as_text,
);
