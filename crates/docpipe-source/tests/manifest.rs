//! Manifests (JSONL, CSV, Parquet) read from a local folder.

use std::fs;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Fields};
use docpipe_core::Question;
use docpipe_source::{list_documents, ManifestSpec, Shard, SourceError, SourceSpec};
use docpipe_store::Stores;
use parquet::arrow::ArrowWriter;

fn question(id: &str, text: &str) -> Question {
    Question {
        id: id.into(),
        text: text.into(),
    }
}

async fn list(spec: ManifestSpec) -> Result<Vec<docpipe_core::DocumentRef>, SourceError> {
    list_documents(&SourceSpec::Manifest(spec), &Stores::default(), None).await
}

#[tokio::test]
async fn jsonl_entries_carry_questions_keys_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("docs")).unwrap();
    fs::write(dir.path().join("docs/a.pdf"), b"aaaa").unwrap();
    let manifest = dir.path().join("manifest.jsonl");
    fs::write(
        &manifest,
        concat!(
            r#"{"uri": "docs/a.pdf", "questions": [{"id": "q1", "question": "Total?"}, {"id": 7, "text": "Date?"}], "tenant": "acme", "n": 3}"#,
            "\n\n",
            r#"{"uri": "s3://bucket/b.pdf"}"#,
            "\n",
            r#"{"uri": "docs/missing.pdf", "tenant": null}"#,
            "\n",
        ),
    )
    .unwrap();
    let spec = ManifestSpec {
        key_columns: vec!["tenant".into(), "n".into()],
        resolve_versions: false,
        ..ManifestSpec::new(manifest.to_str().unwrap())
    };
    let docs = list(spec.clone()).await.unwrap();
    let uris: Vec<&str> = docs.iter().map(|d| d.uri.as_str()).collect();
    let local = dir.path().join("docs/a.pdf").display().to_string();
    let missing = dir.path().join("docs/missing.pdf").display().to_string();
    assert_eq!(
        uris,
        [local.as_str(), "s3://bucket/b.pdf", missing.as_str()]
    );
    assert_eq!(
        docs[0].questions,
        [question("q1", "Total?"), question("7", "Date?")]
    );
    assert_eq!(docs[0].keys.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(docs[0].keys.get("n").map(String::as_str), Some("3"));
    assert!(docs[1].questions.is_empty() && docs[1].keys.is_empty());
    assert!(docs[2].keys.is_empty(), "null keys are absent");

    // With versions resolved: the existing file gets its etag and size, the missing one none.
    let local_only = dir.path().join("local.jsonl");
    fs::write(
        &local_only,
        "{\"uri\": \"docs/a.pdf\"}\n{\"uri\": \"docs/missing.pdf\"}\n",
    )
    .unwrap();
    let docs = list(ManifestSpec::new(local_only.to_str().unwrap()))
        .await
        .unwrap();
    assert!(docs[0].version.is_some());
    assert_eq!(docs[0].size, Some(4));
    assert_eq!((docs[1].version.as_ref(), docs[1].size), (None, None));
}

#[tokio::test]
async fn malformed_jsonl_lines_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bad.jsonl");
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
        fs::write(&manifest, content).unwrap();
        let err = list(ManifestSpec::new(manifest.to_str().unwrap()))
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

#[tokio::test]
async fn missing_manifest_and_unknown_format_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let err = list(ManifestSpec::new(missing.to_str().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::ReadManifest { .. }), "{err}");
    assert!(err.to_string().contains("nope.jsonl"), "{err}");

    let odd = dir.path().join("manifest.txt");
    fs::write(&odd, "x").unwrap();
    let err = list(ManifestSpec::new(odd.to_str().unwrap()))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Manifest { .. }), "{err}");
}

fn write_parquet(path: &std::path::Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test]
async fn parquet_manifest_with_keys_and_structured_questions() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("documents.parquet");
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
    write_parquet(
        &manifest,
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
    );
    let spec = ManifestSpec {
        uri_column: "document_uri".into(),
        key_columns: vec!["contract_id".into()],
        questions_column: Some("questions".into()),
        resolve_versions: false,
        ..ManifestSpec::new(manifest.to_str().unwrap())
    };
    let docs = list(spec.clone()).await.unwrap();
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
        &Stores::default(),
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

    let err = list(ManifestSpec {
        key_columns: vec!["customer_id".into()],
        ..spec
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("customer_id"), "{err}");
}

#[tokio::test]
async fn parquet_manifest_with_a_null_uri_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.parquet");
    write_parquet(
        &manifest,
        vec![(
            "uri",
            Arc::new(StringArray::from(vec![Some("s3://b/x.pdf"), None])) as ArrayRef,
        )],
    );
    let err = list(ManifestSpec::new(manifest.to_str().unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::ManifestLine { line: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn csv_manifest_keeps_keys_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    fs::write(
        &manifest,
        "uri,account,questions\ns3://b/x.pdf,007,\"[{\"\"id\"\": \"\"a\"\", \"\"text\"\": \"\"Who?\"\"}]\"\ns3://b/y.pdf,,\n",
    )
    .unwrap();
    let spec = ManifestSpec {
        key_columns: vec!["account".into()],
        questions_column: Some("questions".into()),
        resolve_versions: false,
        ..ManifestSpec::new(manifest.to_str().unwrap())
    };
    let docs = list(spec).await.unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].keys.get("account").map(String::as_str), Some("007"));
    assert_eq!(docs[0].questions, [question("a", "Who?")]);
    assert!(docs[1].questions.is_empty());
}
