//! Reading the fixture dataset (`fixtures/docvqa/`) in both layouts, and bad inputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::StreamExt;

use docpipe_eval::{Annotation, DatasetError, DocVqaDataset, ImageSource, PageGroup};
use docpipe_store::Stores;

fn fixture(rel: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/docvqa");
    root.join(rel).to_str().unwrap().to_owned()
}

async fn open(location: &str) -> DocVqaDataset {
    DocVqaDataset::open(&Stores::default(), location)
        .await
        .unwrap()
}

async fn all_pages(location: &str, limit: Option<usize>) -> Vec<PageGroup> {
    let dataset = open(location).await;
    let mut reader = dataset.pages(limit).await.unwrap();
    let mut pages = Vec::new();
    while let Some(page) = reader.next().await {
        pages.push(page.unwrap());
    }
    pages
}

fn by_id(annotations: Vec<Annotation>) -> BTreeMap<i64, Annotation> {
    annotations
        .into_iter()
        .map(|a| (a.question_id, a))
        .collect()
}

#[tokio::test]
async fn json_layout_reads_all_questions_in_file_order() {
    let dataset = open(&fixture("json/val_v1.0.json")).await;
    let annotations = dataset.annotations(None).await.unwrap();
    let ids: Vec<i64> = annotations.iter().map(|a| a.question_id).collect();
    assert_eq!(ids, (5001..=5010).collect::<Vec<_>>());
    let first = &annotations[0];
    assert_eq!(first.question, "What is the invoice number?");
    assert_eq!(first.doc_id, 101);
    assert_eq!(
        first.answers.as_deref(),
        Some(&["INV-2024-0042".to_owned(), "inv 2024 0042".to_owned()][..])
    );
    assert_eq!(annotations[1].question_types, ["form", "layout"]);
}

#[tokio::test]
async fn parquet_folder_has_the_same_annotations_as_the_json() {
    let json = open(&fixture("json/val_v1.0.json")).await;
    let parquet = open(&fixture("parquet")).await;
    let from_parquet = parquet.annotations(None).await.unwrap();
    assert_eq!(from_parquet.len(), 10);
    assert_eq!(
        by_id(from_parquet),
        by_id(json.annotations(None).await.unwrap())
    );
}

#[tokio::test]
async fn pages_group_every_question_of_an_image_in_both_layouts() {
    for location in [fixture("json/val_v1.0.json"), fixture("parquet")] {
        let pages = all_pages(&location, None).await;
        assert_eq!(pages.len(), 4, "{location}");
        let mut per_doc = BTreeMap::new();
        for page in &pages {
            let docs: Vec<i64> = page.questions.iter().map(|q| q.doc_id).collect();
            assert!(
                docs.iter().all(|&d| d == docs[0]),
                "{location}: mixed page {docs:?}"
            );
            per_doc.insert(docs[0], page.questions.len());
        }
        assert_eq!(
            per_doc,
            BTreeMap::from([(101, 3), (102, 2), (103, 3), (104, 2)]),
            "{location}"
        );
    }
}

#[tokio::test]
async fn stored_and_inline_images_are_the_same_bytes() {
    let json_pages = all_pages(&fixture("json/val_v1.0.json"), None).await;
    let parquet_pages = all_pages(&fixture("parquet"), None).await;
    for page in &json_pages {
        let ImageSource::Stored(location) = &page.image else {
            panic!("json layout gives stored images");
        };
        assert!(location.url().as_str().starts_with("file://"));
        assert!(location.url().path().contains("/json/documents/"));
        let stored = page.read_image().await.unwrap();
        assert!(stored.starts_with(b"\x89PNG"));
        let doc = page.questions[0].doc_id;
        let twin = parquet_pages
            .iter()
            .find(|p| p.questions[0].doc_id == doc)
            .unwrap();
        assert!(matches!(twin.image, ImageSource::Inline { .. }));
        assert_eq!(twin.read_image().await.unwrap(), stored);
    }
}

#[tokio::test]
async fn limit_takes_the_first_questions_in_dataset_order() {
    let json = all_pages(&fixture("json/val_v1.0.json"), Some(4)).await;
    let ids: Vec<i64> = json
        .iter()
        .flat_map(|p| p.questions.iter().map(|q| q.question_id))
        .collect();
    assert_eq!(ids, [5001, 5002, 5003, 5004]);
    assert_eq!(json.len(), 2);

    // The Parquet rows are shuffled: the first 5 rows of the first file.
    let dataset = open(&fixture("parquet")).await;
    let parquet: Vec<PageGroup> = dataset
        .pages(Some(5))
        .await
        .unwrap()
        .into_stream()
        .map(Result::unwrap)
        .collect()
        .await;
    let mut ids: Vec<i64> = parquet
        .iter()
        .flat_map(|p| p.questions.iter().map(|q| q.question_id))
        .collect();
    ids.sort();
    assert_eq!(ids, [5002, 5004, 5005, 5008, 5009]);
    assert_eq!(dataset.annotations(Some(7)).await.unwrap().len(), 7);
}

#[tokio::test]
async fn a_single_parquet_file_opens_too() {
    let dataset = open(&fixture("parquet/validation-00001-of-00002.parquet")).await;
    assert_eq!(dataset.annotations(None).await.unwrap().len(), 5);
}

#[tokio::test]
async fn malformed_json_names_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("val_v1.0.json");
    std::fs::write(
        &path,
        "{\"data\": [\n  {\"questionId\": 1, \"question\": \"q\"\n]}",
    )
    .unwrap();
    let dataset = open(path.to_str().unwrap()).await;
    let err = dataset.annotations(None).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DatasetError::Json { .. }), "{err:?}");
    assert!(message.contains("val_v1.0.json"), "{message}");
    assert!(message.contains("line 3"), "{message}");

    std::fs::write(
        &path,
        r#"{"data": [{"questionId": 1, "question": "q", "docId": 2}]}"#,
    )
    .unwrap();
    let err = dataset.annotations(None).await.unwrap_err();
    assert!(err.to_string().contains("missing field `image`"), "{err}");
}

#[tokio::test]
async fn missing_image_is_an_error_for_that_page_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("documents")).unwrap();
    std::fs::write(dir.path().join("documents/a.png"), b"png a").unwrap();
    let annotations = serde_json::json!({"dataset_split": "test", "data": [
        {"questionId": 1, "question": "q1", "image": "documents/missing.png", "docId": 1},
        {"questionId": 2, "question": "q2", "image": "documents/a.png", "docId": 2},
    ]});
    let path = dir.path().join("test_v1.0.json");
    std::fs::write(&path, annotations.to_string()).unwrap();
    let pages = all_pages(path.to_str().unwrap(), None).await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].questions[0].answers, None);
    match pages[0].read_image().await {
        Err(DatasetError::MissingImage {
            url, question_id, ..
        }) => {
            assert!(url.ends_with("documents/missing.png"), "{url}");
            assert_eq!(question_id, 1);
        }
        other => panic!("expected a missing image, got {other:?}"),
    }
    assert_eq!(&*pages[1].read_image().await.unwrap(), b"png a");
}

#[tokio::test]
async fn folder_without_parquet_and_file_without_columns_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = DocVqaDataset::open(&Stores::default(), dir.path().to_str().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, DatasetError::NoFiles { .. }), "{err:?}");

    let path = dir.path().join("bad.parquet");
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "questionId",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![1])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let dataset = open(path.to_str().unwrap()).await;
    let err = dataset.annotations(None).await.unwrap_err();
    assert!(matches!(err, DatasetError::Malformed { .. }), "{err:?}");
    assert!(
        err.to_string().contains("missing column `question`"),
        "{err}"
    );

    std::fs::write(&path, b"not parquet").unwrap();
    let err = dataset.annotations(None).await.unwrap_err();
    assert!(matches!(err, DatasetError::Parquet { .. }), "{err:?}");
    assert!(err.to_string().contains("bad.parquet"), "{err}");
}

#[tokio::test]
async fn missing_annotation_file_is_not_found() {
    let dataset = open(&fixture("json/nope.json")).await;
    let err = dataset.annotations(None).await.unwrap_err();
    assert!(err.to_string().contains("nope.json: not found"), "{err}");
}
