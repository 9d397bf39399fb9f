//! Feeding an exclusive run (`sink.exclusive`): the engine only sees documents this run has
//! claimed on the sink. Documents a live overlapping run holds are asked about again every poll
//! interval until that run commits them (this run counts them done) or stops (this run takes
//! them over), so every run of a group ends only when every listed document is committed.

use std::sync::Arc;

use docpipe_core::DocumentRef;
use docpipe_sink::{Claim, Claims, DocumentKey, DocumentState, LostDocument, SinkError};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::progress::Counters;

/// Claims asked at once: claiming costs a round trip or two to the store per document, which
/// one at a time would cap a run at a few dozen documents per second on a remote bucket.
const CONCURRENT_CLAIMS: usize = 8;

/// What claiming found, for the run report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClaimStats {
    /// Documents claimed from a run that had stopped.
    pub(crate) taken_over: u64,
    /// Documents another run committed after this run listed them.
    pub(crate) by_other_runs: u64,
}

/// Claims `todo` in order, sending the documents this run got to `claimed`; waits for the ones
/// live runs hold. Returns early, without error, when the engine stops taking documents.
pub(crate) async fn claim_documents(
    todo: Vec<DocumentRef>,
    claims: Arc<Claims>,
    claimed: mpsc::Sender<DocumentRef>,
    counters: Arc<Counters>,
) -> Result<ClaimStats, SinkError> {
    let mut stats = ClaimStats::default();
    let mut waiting = todo;
    let mut first_pass = true;
    while !waiting.is_empty() {
        if !first_pass {
            tokio::select! {
                _ = tokio::time::sleep(claims.poll_interval()) => {}
                _ = claimed.closed() => return Ok(stats),
            }
        }
        let mut held = Vec::new();
        let mut answers = futures::stream::iter(waiting)
            .map(|doc| {
                let claims = &claims;
                async move {
                    let claim = claims.claim(&DocumentKey::of(&doc)).await;
                    (doc, claim)
                }
            })
            .buffered(CONCURRENT_CLAIMS);
        while let Some((doc, claim)) = answers.next().await {
            match claim? {
                Claim::Claimed { taken_over_from } => {
                    if let Some(run_id) = taken_over_from {
                        tracing::warn!(doc = %doc.uri, "taken over from run {run_id}, which stopped");
                        stats.taken_over += 1;
                    }
                    if claimed.send(doc).await.is_err() {
                        return Ok(stats);
                    }
                }
                Claim::Held { run_id } => held.push((doc, run_id)),
                Claim::Committed { run_id } => {
                    tracing::debug!(doc = %doc.uri, "committed by run {run_id}");
                    stats.by_other_runs += 1;
                    counters.document_done_elsewhere();
                }
            }
        }
        if first_pass && !held.is_empty() {
            tracing::info!(
                "{} documents are held by other runs (first: {} by run {}); this run takes \
                 them over if those runs stop, else waits for them to be committed",
                held.len(),
                held[0].0.uri,
                held[0].1
            );
        }
        first_pass = false;
        waiting = held.into_iter().map(|(doc, _)| doc).collect();
    }
    Ok(stats)
}

/// The fate of the documents this run lost to overlapping runs.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// Committed by the runs that took them over.
    pub(crate) committed: u64,
    /// Neither committed nor held by a live run: a rerun must process them.
    pub(crate) open: Vec<DocumentKey>,
}

/// Waits while the runs that took `lost` over still hold them, so a run only ends when its
/// documents are committed somewhere.
pub(crate) async fn settle(lost: &[LostDocument], claims: &Claims) -> Result<Settled, SinkError> {
    let mut settled = Settled::default();
    let mut waiting: Vec<DocumentKey> = lost.iter().map(|l| l.doc.clone()).collect();
    while !waiting.is_empty() {
        let mut held = Vec::new();
        for doc in waiting {
            match claims.status(&doc).await? {
                DocumentState::Committed { .. } => settled.committed += 1,
                DocumentState::Held { .. } => held.push(doc),
                DocumentState::Open => settled.open.push(doc),
            }
        }
        waiting = held;
        if !waiting.is_empty() {
            tokio::time::sleep(claims.poll_interval()).await;
        }
    }
    Ok(settled)
}
