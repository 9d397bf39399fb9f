//! The dataset manifest of a sharded run (`docpipe commit`), over shards written by real sinks:
//! written once when every shard is complete, else nothing is written and each missing or
//! failed shard is named.

use docpipe_core::Shard;
use docpipe_sink::{
    commit_dataset, DatasetCommit, DatasetManifest, RunManifest, RunReport, ShardProblem, Sink,
    SinkError, SinkOptions, WrittenRows,
};
use docpipe_testkit::TestStore;

use super::{options, sink_url, under_sink};
use crate::rows::document_rows;

/// Runs shard `spec` to completion over the documents it owns among `uris`; returns its rows.
async fn complete_shard(store: &TestStore, spec: &str, uris: &[String]) -> u64 {
    let shard: Shard = spec.parse().unwrap();
    let mut sink = Sink::open(
        store.stores(),
        SinkOptions {
            shard: Some(shard),
            ..options(store)
        },
    )
    .unwrap();
    for uri in uris.iter().filter(|uri| shard.owns(uri)) {
        sink.commit_document(document_rows(uri, "v1", 1))
            .await
            .unwrap();
    }
    let manifest = sink
        .finish(RunManifest {
            run_id: format!("run-{}", shard.index()),
            model: "tiny@abc".into(),
            ..RunManifest::default()
        })
        .await
        .unwrap();
    manifest.rows
}

fn uris() -> Vec<String> {
    (0..12).map(|i| format!("s3://in/doc-{i}.pdf")).collect()
}

async fn commit(store: &TestStore, shards: Option<u32>) -> Result<DatasetCommit, SinkError> {
    commit_dataset(store.stores(), &sink_url(store), shards).await
}

async fn written_dataset_manifest(store: &TestStore) -> DatasetManifest {
    serde_json::from_slice(&store.read(&under_sink("manifest.json")).await).unwrap()
}

async fn complete_shards_are_committed_once(store: &TestStore) {
    let mut rows = 0;
    for spec in ["0/3", "1/3", "2/3"] {
        rows += complete_shard(store, spec, &uris()).await;
    }
    // Two questions per one-page document.
    assert_eq!(rows, 24);
    let DatasetCommit::Written { url, manifest } = commit(store, None).await.unwrap() else {
        panic!("expected the dataset manifest to be written");
    };
    assert!(url.ends_with("/manifest.json"), "{url}");
    assert_eq!(manifest.shards, 3);
    assert_eq!(manifest.rows, 24);
    assert_eq!(manifest.documents, 12);
    assert_eq!(manifest.key_columns, ["contract_id"]);
    let shards: Vec<&str> = manifest
        .shard_manifests
        .iter()
        .map(|entry| entry.shard.as_str())
        .collect();
    assert_eq!(shards, ["0/3", "1/3", "2/3"]);
    for entry in &manifest.shard_manifests {
        let label = entry.shard.replace('/', "-of-");
        assert_eq!(entry.manifest, format!("manifest-shard-{label}.json"));
        assert!(!entry.parts.is_empty());
        for part in &entry.parts {
            assert!(part.path.starts_with(&format!("parts/shard-{label}-")));
            assert!(store.exists(&under_sink(&part.path)).await, "{}", part.path);
        }
        assert_eq!(entry.rows, entry.parts.iter().map(|p| p.rows).sum::<u64>());
    }
    assert_eq!(written_dataset_manifest(store).await, manifest);

    // Create-only: a second commit leaves it alone.
    assert!(matches!(
        commit(store, Some(3)).await.unwrap(),
        DatasetCommit::AlreadyCommitted { .. }
    ));
    assert_eq!(written_dataset_manifest(store).await, manifest);
}

async fn missing_and_failed_shards_are_named_and_nothing_is_written(store: &TestStore) {
    complete_shard(store, "0/4", &uris()).await;
    complete_shard(store, "2/4", &uris()).await;
    // A shard of another count.
    complete_shard(store, "1/2", &uris()).await;
    // Shard 3 finished, but its report says it left documents undone (source.limit).
    complete_shard(store, "3/4", &uris()).await;
    let report = RunReport {
        shard: Some("3/4".into()),
        documents_listed: 5,
        documents_skipped: 1,
        written: WrittenRows {
            documents_committed: 2,
            ..WrittenRows::default()
        },
        ..RunReport::default()
    };
    store
        .put(
            &under_sink("report-shard-3-of-4.json"),
            serde_json::to_vec(&report).unwrap(),
        )
        .await;

    let result = commit(store, Some(4)).await.unwrap();
    let DatasetCommit::Incomplete { problems } = result else {
        panic!("expected missing shards, got {result:?}");
    };
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 3, "{text:?}");
    assert_eq!(
        problems[1],
        ShardProblem::Missing {
            shard: "1/4".into()
        }
    );
    assert!(
        text[0].contains("shard 1/2") && text[0].contains("2 shards"),
        "{text:?}"
    );
    assert!(
        text[2].contains("shard 3/4") && text[2].contains("2 of 5 listed documents"),
        "{text:?}"
    );
    assert!(!store.exists(&under_sink("manifest.json")).await);

    // Without --shards the manifests disagree on the count.
    let err = commit(store, None).await.unwrap_err();
    assert!(matches!(err, SinkError::ShardCount { .. }), "{err}");
    assert!(err.to_string().contains("--shards"), "{err}");
}

async fn a_part_listed_but_absent_fails_its_shard(store: &TestStore) {
    complete_shard(store, "0/2", &uris()).await;
    complete_shard(store, "1/2", &uris()).await;
    let part = store
        .list(&under_sink("parts/"))
        .await
        .into_iter()
        .find(|path| path.contains("shard-1-of-2-"))
        .unwrap();
    store.delete(&part).await;
    let result = commit(store, None).await.unwrap();
    let DatasetCommit::Incomplete { problems } = result else {
        panic!("expected a failed shard, got {result:?}");
    };
    assert_eq!(problems.len(), 1);
    let ShardProblem::Failed { shard, reason } = &problems[0] else {
        panic!("{problems:?}");
    };
    assert_eq!(shard, "1/2");
    assert!(reason.contains("absent"), "{reason}");
}

async fn the_shard_count_is_needed_when_no_shard_finished(store: &TestStore) {
    let err = commit(store, None).await.unwrap_err();
    assert!(matches!(err, SinkError::ShardCount { .. }), "{err}");
    let result = commit(store, Some(2)).await.unwrap();
    assert_eq!(
        result,
        DatasetCommit::Incomplete {
            problems: vec![
                ShardProblem::Missing {
                    shard: "0/2".into()
                },
                ShardProblem::Missing {
                    shard: "1/2".into()
                },
            ]
        }
    );
    assert!(matches!(
        commit(store, Some(0)).await.unwrap_err(),
        SinkError::ShardCount { .. }
    ));
}

docpipe_testkit::conformance_tests!(
    complete_shards_are_committed_once,
    missing_and_failed_shards_are_named_and_nothing_is_written,
    a_part_listed_but_absent_fails_its_shard,
    the_shard_count_is_needed_when_no_shard_finished,
);
