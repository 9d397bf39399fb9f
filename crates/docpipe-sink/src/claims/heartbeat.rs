//! Run heartbeats: `_claims/runs/<run_id>.json`, rewritten by a live run every quarter of its
//! hold. Another run judges the holder stopped from what it sees itself: a heartbeat that has not
//! changed for the holder's hold, timed on the observer's own monotonic clock, so the clocks of
//! different machines never have to agree. A run that ends says so, and its claims are free at
//! once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use docpipe_store::{Location, StoreError};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::log::CLAIMS_DIR;
use crate::SinkError;

/// What a run writes in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) run_id: String,
    /// Incremented on every write: a value that stops changing is a run that stopped.
    pub(crate) beat: u64,
    /// The run's hold: how long others wait after its last beat.
    pub(crate) hold_ms: u64,
    /// The run finished (or gave up): its claims are free.
    pub(crate) ended: bool,
    /// For people reading the file.
    pub(crate) pid: u32,
}

impl Heartbeat {
    /// Interval between beats: a quarter of the hold, so three beats can go missing before
    /// anyone takes over.
    pub(crate) fn interval(hold: Duration) -> Duration {
        (hold / 4).max(Duration::from_millis(50))
    }

    pub(crate) async fn write(&self, sink: &Location) -> Result<(), SinkError> {
        let path = path_of(sink, &self.run_id);
        let error = |message: String| SinkError::Write {
            url: sink.url_of(&path).to_string(),
            message,
        };
        let body = serde_json::to_vec_pretty(self).map_err(|e| error(e.to_string()))?;
        sink.store()
            .put(&path, body.into())
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(())
    }
}

fn path_of(sink: &Location, run_id: &str) -> Path {
    sink.child(&format!("{CLAIMS_DIR}/runs/{run_id}.json"))
}

/// The last heartbeat seen of one run, and since when it has been the same.
struct Observation {
    beat: Option<u64>,
    ended: bool,
    hold: Duration,
    since: Instant,
    read_at: Instant,
}

/// What this run has seen of other runs' heartbeats.
pub(crate) struct Liveness {
    observed: Mutex<HashMap<String, Observation>>,
    /// Used for a run whose heartbeat is missing (deleted by hand): its claims still wait
    /// this long.
    default_hold: Duration,
}

impl Liveness {
    pub(crate) fn new(default_hold: Duration) -> Self {
        Self {
            observed: Mutex::new(HashMap::new()),
            default_hold,
        }
    }

    /// True when `run_id` ended, or its heartbeat has not changed for its hold since this run
    /// first saw that value. A heartbeat read less than an eighth of the hold ago is not read
    /// again: a run waiting on thousands of documents held by one run reads its heartbeat once
    /// per round, not once per document.
    pub(crate) async fn has_stopped(
        &self,
        sink: &Location,
        run_id: &str,
    ) -> Result<bool, SinkError> {
        let now = Instant::now();
        if let Some(seen) = self.lock().get(run_id) {
            if now.duration_since(seen.read_at) < self.default_hold / 8 {
                return Ok(seen.ended || now.duration_since(seen.since) >= seen.hold);
            }
        }
        let heartbeat = match sink.at(path_of(sink, run_id)).read().await {
            Ok(bytes) => serde_json::from_slice::<Heartbeat>(&bytes).ok(),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let now = Instant::now();
        let beat = heartbeat.as_ref().map(|h| h.beat);
        let mut observed = self.lock();
        let seen = observed.entry(run_id.to_owned()).or_insert(Observation {
            beat,
            ended: false,
            hold: self.default_hold,
            since: now,
            read_at: now,
        });
        if seen.beat != beat {
            seen.beat = beat;
            seen.since = now;
        }
        seen.read_at = now;
        seen.ended = heartbeat.as_ref().is_some_and(|h| h.ended);
        seen.hold = heartbeat.map_or(self.default_hold, |h| Duration::from_millis(h.hold_ms));
        Ok(seen.ended || now.duration_since(seen.since) >= seen.hold)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Observation>> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }
}
