//! The sink against a local S3 server (moto; `make setup` installs it), directly and through a
//! proxy that injects transient faults.

mod common;

use common::document_rows;
use docpipe_core::DocumentRef;
use docpipe_sink::{read_rows, OutputRow, RunManifest, Sink, SinkError, SinkOptions};
use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::{Fault, FaultPlan, FaultyProxy, MotoServer};

const SINK: &str = "s3://out/runs/today/";

fn options() -> SinkOptions {
    SinkOptions {
        key_columns: vec!["contract_id".into()],
        documents_per_part: 2,
        ..SinkOptions::new(SINK)
    }
}

/// Writes four documents (two parts) and returns the rows written.
async fn write_documents(stores: &Stores) -> Result<Vec<OutputRow>, SinkError> {
    let mut sink = Sink::open(stores, options())?;
    let mut written = Vec::new();
    for i in 0..4 {
        let rows = document_rows(&format!("s3://in/doc-{i}.pdf"), "etag-1", 2);
        written.extend(rows.clone());
        sink.commit_document(rows).await?;
    }
    assert!(sink.flush().await?.is_none(), "both parts already written");
    Ok(written)
}

fn sorted(mut rows: Vec<OutputRow>) -> Vec<OutputRow> {
    rows.sort_by(|a, b| {
        (&a.doc_uri, a.page, &a.question_id).cmp(&(&b.doc_uri, b.page, &b.question_id))
    });
    rows
}

#[tokio::test]
async fn parts_resume_and_manifest_on_s3() {
    let moto = MotoServer::start("out").expect("moto S3 server");
    let stores = Stores::new(moto.store_options());
    let written = write_documents(&stores).await.unwrap();

    let rows = read_rows(&stores, SINK).await.unwrap();
    assert_eq!(sorted(rows), sorted(written));

    let mut sink = Sink::open(&stores, options()).unwrap();
    let committed = sink.committed().await.unwrap();
    assert_eq!(committed.document_count(), 4);
    assert_eq!(committed.parts().len(), 2);
    let mut doc = DocumentRef::new("s3://in/doc-3.pdf");
    doc.version = Some("etag-1".into());
    assert!(committed.contains(&doc));
    doc.version = Some("etag-2".into());
    assert!(!committed.contains(&doc));

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

    let again = Sink::open(&stores, options()).unwrap();
    let err = again.finish(RunManifest::default()).await.unwrap_err();
    assert!(matches!(err, SinkError::ManifestExists { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("s3://out/runs/today/manifest.json"),
        "{err}"
    );
}

#[tokio::test]
async fn transient_faults_are_retried_and_the_data_is_intact() {
    let moto = MotoServer::start("out").expect("moto S3 server");
    for fault in [Fault::ServiceUnavailable, Fault::Disconnect] {
        let plan = FaultPlan {
            fault,
            first: 2,
            every: Some(3),
        };
        let proxy = FaultyProxy::start(moto.address(), plan).await.unwrap();
        let stores = Stores::new(proxy.store_options());
        let sink = format!("s3://out/{fault:?}/");
        let mut writer = Sink::open(
            &stores,
            SinkOptions {
                location: sink.clone(),
                ..options()
            },
        )
        .unwrap();
        let mut written = Vec::new();
        for i in 0..4 {
            let rows = document_rows(&format!("s3://in/doc-{i}.pdf"), "etag-1", 2);
            written.extend(rows.clone());
            writer.commit_document(rows).await.unwrap();
        }
        let committed = writer.committed().await.unwrap();
        assert_eq!(committed.document_count(), 4, "{fault:?}");
        let rows = read_rows(&stores, &sink).await.unwrap();
        assert_eq!(sorted(rows), sorted(written), "{fault:?}");
        assert!(
            proxy.faults_injected() >= 3,
            "{fault:?}: only {} faults in {} requests",
            proxy.faults_injected(),
            proxy.requests()
        );
    }
}

#[tokio::test]
async fn unreachable_store_fails_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options_for = |endpoint: String| {
        StoreOptions::quick()
            .with_config("aws_endpoint_url", endpoint)
            .with_config("aws_allow_http", "true")
            .with_config("aws_region", "us-east-1")
            .with_config("aws_access_key_id", "testing")
            .with_config("aws_secret_access_key", "testing")
    };
    let stores = Stores::new(options_for(format!("http://127.0.0.1:{port}")));
    let mut sink = Sink::open(&stores, options()).unwrap();
    let err = sink.committed().await.unwrap_err();
    assert!(matches!(err, SinkError::List { .. }), "{err}");
    assert!(
        err.to_string().contains("s3://out/runs/today/parts"),
        "{err}"
    );

    sink.commit_document(document_rows("s3://in/a.pdf", "e", 1))
        .await
        .unwrap();
    let err = sink.flush().await.unwrap_err();
    assert!(matches!(err, SinkError::Write { .. }), "{err}");
    assert!(
        err.to_string().contains("s3://out/runs/today/parts/all-"),
        "{err}"
    );

    // A store that always answers 503 is retried max_retries times, then reported.
    let moto = MotoServer::start("out").expect("moto S3 server");
    let always = FaultPlan {
        fault: Fault::ServiceUnavailable,
        first: usize::MAX,
        every: None,
    };
    let proxy = FaultyProxy::start(moto.address(), always).await.unwrap();
    let stores = Stores::new(proxy.store_options());
    let err = Sink::open(&stores, options())
        .unwrap()
        .committed()
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::List { .. }), "{err}");
    let quick = StoreOptions::quick();
    assert_eq!(proxy.requests(), quick.retry.max_retries + 1);
}
