//! S3 faults, which only a remote store has: transient ones (through a proxy in front of
//! moto that fails chosen requests) are retried and leave the data intact; an unreachable or
//! always-failing store fails after a bounded number of retries, naming the location.

use docpipe_sink::{read_rows, Sink, SinkError, SinkOptions};
use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::{unreachable_s3_options, Fault, FaultPlan, FaultyProxy, MotoServer};

use crate::rows::{document_rows, sorted};

const SINK: &str = "s3://out/runs/today/";

fn options() -> SinkOptions {
    SinkOptions {
        key_columns: vec!["contract_id".into()],
        documents_per_part: 2,
        ..SinkOptions::new(SINK)
    }
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
    let stores = Stores::new(unreachable_s3_options().unwrap());
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
