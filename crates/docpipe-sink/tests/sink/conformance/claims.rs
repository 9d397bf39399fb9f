//! Claims: two sinks on one location (two overlapping runs) never both process or both commit
//! a document; a run that stops is taken over after its hold, at once when it ended cleanly.

use std::time::Duration;

use docpipe_sink::{read_rows, Claim, DocumentKey, DocumentState, Sink, SinkOptions};
use docpipe_testkit::TestStore;

use super::{options, sink_url};
use crate::rows::document_rows;

const HOLD: Duration = Duration::from_millis(400);

fn doc(i: usize) -> DocumentKey {
    DocumentKey {
        uri: format!("s3://in/doc-{i}.pdf"),
        version: Some("v1".into()),
    }
}

fn rows_of(i: usize) -> Vec<docpipe_sink::OutputRow> {
    document_rows(&format!("s3://in/doc-{i}.pdf"), "v1", 2)
}

/// One document per part, so each commit is visible at once.
fn one_per_part(store: &TestStore) -> SinkOptions {
    SinkOptions {
        documents_per_part: 1,
        ..options(store)
    }
}

/// Rows per document URI in what a reader of the sink sees.
async fn rows_per_document(store: &TestStore) -> std::collections::BTreeMap<String, usize> {
    let rows = read_rows(store.stores(), &sink_url(store)).await.unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for row in rows {
        *counts.entry(row.doc_uri).or_default() += 1;
    }
    counts
}

async fn a_held_document_is_claimed_by_one_run_and_committed_once(store: &TestStore) {
    let mut a = Sink::open(store.stores(), one_per_part(store)).unwrap();
    let mut b = Sink::open(store.stores(), one_per_part(store)).unwrap();
    let claims_a = a.start_claims("run-a", HOLD).await.unwrap();
    let claims_b = b.start_claims("run-b", HOLD).await.unwrap();

    assert_eq!(
        claims_a.claim(&doc(0)).await.unwrap(),
        Claim::Claimed {
            taken_over_from: None
        }
    );
    let held = Claim::Held {
        run_id: "run-a".into(),
    };
    assert_eq!(claims_b.claim(&doc(0)).await.unwrap(), held);
    // Run a keeps beating: however long b waits, the document stays a's.
    tokio::time::sleep(HOLD * 2).await;
    assert_eq!(claims_b.claim(&doc(0)).await.unwrap(), held);

    a.commit_document(rows_of(0)).await.unwrap().unwrap();
    let committed = Claim::Committed {
        run_id: "run-a".into(),
    };
    assert_eq!(claims_b.claim(&doc(0)).await.unwrap(), committed);
    assert_eq!(
        claims_b.status(&doc(0)).await.unwrap(),
        DocumentState::Committed {
            run_id: "run-a".into()
        }
    );
    assert_eq!(rows_per_document(store).await.len(), 1);
    claims_a.end().await;
    claims_b.end().await;
}

async fn a_crashed_runs_documents_are_taken_over_after_its_hold(store: &TestStore) {
    let mut a = Sink::open(store.stores(), one_per_part(store)).unwrap();
    let claims_a = a.start_claims("run-a", HOLD).await.unwrap();
    claims_a.claim(&doc(0)).await.unwrap();
    // A crash: the heartbeat stops without the run saying it ended.
    drop(claims_a);
    drop(a);

    let mut b = Sink::open(store.stores(), one_per_part(store)).unwrap();
    let claims_b = b.start_claims("run-b", HOLD).await.unwrap();
    assert_eq!(
        claims_b.claim(&doc(0)).await.unwrap(),
        Claim::Held {
            run_id: "run-a".into()
        },
        "b has not yet seen a's heartbeat stand still for a hold"
    );
    tokio::time::sleep(HOLD + claims_b.poll_interval()).await;
    assert_eq!(
        claims_b.claim(&doc(0)).await.unwrap(),
        Claim::Claimed {
            taken_over_from: Some("run-a".into())
        }
    );
    b.commit_document(rows_of(0)).await.unwrap().unwrap();
    assert_eq!(rows_per_document(store).await.values().sum::<usize>(), 4);
    claims_b.end().await;
}

async fn a_run_that_lost_its_claims_commits_none_of_those_documents(store: &TestStore) {
    let options = SinkOptions {
        documents_per_part: 2,
        ..options(store)
    };
    let mut a = Sink::open(store.stores(), options.clone()).unwrap();
    let claims_a = a.start_claims("run-a", HOLD).await.unwrap();
    for i in 0..3 {
        claims_a.claim(&doc(i)).await.unwrap();
    }
    // Run a looks ended to the others (as a stalled run looks stopped) while it still works.
    claims_a.end().await;

    let mut b = Sink::open(store.stores(), one_per_part(store)).unwrap();
    let claims_b = b.start_claims("run-b", HOLD).await.unwrap();
    assert_eq!(
        claims_b.claim(&doc(1)).await.unwrap(),
        Claim::Claimed {
            taken_over_from: Some("run-a".into())
        },
        "an ended run's claims are free at once"
    );
    b.commit_document(rows_of(1)).await.unwrap().unwrap();

    // Run a resumes: documents 0 and 1 go to one part, without document 1.
    a.commit_document(rows_of(0)).await.unwrap();
    let part = a.commit_document(rows_of(1)).await.unwrap().unwrap();
    assert_eq!(part.documents, 1);
    let lost = a.lost_documents();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].doc.uri, "s3://in/doc-1.pdf");
    assert_eq!(lost[0].taken_by, "run-b");
    // Document 2 is a's still, as far as the log goes: nobody took it.
    a.commit_document(rows_of(2)).await.unwrap();
    a.flush().await.unwrap().unwrap();
    assert_eq!(a.written().documents_committed, 2);

    let counts = rows_per_document(store).await;
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&rows| rows == 4), "{counts:?}");
    claims_b.end().await;
}

docpipe_testkit::conformance_tests!(
    a_held_document_is_claimed_by_one_run_and_committed_once,
    a_crashed_runs_documents_are_taken_over_after_its_hold,
    a_run_that_lost_its_claims_commits_none_of_those_documents,
);
