//! Claims: how runs that overlap on one sink process and commit each document once.
//!
//! Before processing a document a run appends a `claim` entry to the document's claim log
//! ([`log`]); to commit it, a `commit` entry naming the part, then the part itself. Entries are
//! numbered and written create-only, so two runs appending the same number cannot both succeed:
//! the number is a fencing token that the store checks. A run that lost its claim (another run
//! took the document over while this one was stalled) fails to append its `commit` entry and
//! discards the document's rows.
//!
//! Runs prove they are alive with a heartbeat ([`heartbeat`]); a claim whose run has stopped
//! beating for its hold is taken over by appending the next `claim`. A `commit` entry whose part
//! is not there yet belongs to a run that may still write it: a taker first writes an empty part
//! under that name (create-only), so the stalled run's part can never appear afterwards, then
//! claims. Every write is a create-only put, which every object_store backend supports (local
//! files included, where conditional updates are not): the design is the one in
//! docs/storage.md, "Overlapping runs".

mod heartbeat;
mod log;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use docpipe_store::Location;
use futures::StreamExt;
use object_store::ObjectStoreExt;

use self::heartbeat::{Heartbeat, Liveness};
use self::log::{ClaimLog, Entry, CLAIMS_DIR};
use crate::create_only::{put_create_only, Created};
use crate::resume::{open_part, DocumentKey};
use crate::SinkError;

/// Concurrent appends when a part's documents are sealed.
const SEAL_CONCURRENCY: usize = 16;

/// What [`Claims::claim`] decided for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This run holds the document now and must process it.
    Claimed {
        /// The run that held it before and stopped (crashed, was killed, or stalled past its
        /// hold), if any.
        taken_over_from: Option<String>,
    },
    /// A live run holds it: ask again later (it will commit it, or stop and free it).
    Held {
        /// The holder.
        run_id: String,
    },
    /// Already committed.
    Committed {
        /// The run that committed it.
        run_id: String,
    },
}

/// Where a document stands, as [`Claims::status`] sees it without claiming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentState {
    /// Nobody committed it and no live run holds it.
    Open,
    /// A live run holds it.
    Held {
        /// The holder.
        run_id: String,
    },
    /// Committed.
    Committed {
        /// The run that committed it.
        run_id: String,
    },
}

/// The fate of a document whose rows were about to go into a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sealed {
    /// Its `commit` entry is written: its rows go in the part.
    Kept,
    /// Another run took it over; its rows must be discarded.
    Lost {
        /// The run that took it over.
        by: String,
    },
}

/// What the log says should happen next.
enum Examined {
    /// Nobody holds it: append a claim as entry `number`, after writing `void_part` empty if set.
    Open {
        number: u64,
        previous: Option<String>,
        void_part: Option<String>,
    },
    Held(String),
    Committed(String),
}

/// This run's claims on one sink, and its heartbeat. Started by [`crate::Sink::start_claims`];
/// call [`Claims::end`] when the run stops so others need not wait out the hold.
pub struct Claims {
    sink: Location,
    run_id: String,
    hold: Duration,
    liveness: Liveness,
    /// Documents this run holds, with the number of its claim entry.
    held: Mutex<HashMap<DocumentKey, u64>>,
    /// A Parquet file with the sink's schema and no rows: what voids another run's pending part.
    empty_part: Bytes,
    beating: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Claims {
    /// Checks that the store honours create-only writes, writes the first heartbeat and keeps
    /// beating on the current tokio runtime.
    pub(crate) async fn start(
        sink: Location,
        run_id: String,
        hold: Duration,
        empty_part: Bytes,
    ) -> Result<Arc<Claims>, SinkError> {
        probe_create_only(&sink, &run_id).await?;
        let mut heartbeat = Heartbeat {
            run_id: run_id.clone(),
            beat: 0,
            hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
            ended: false,
            pid: std::process::id(),
        };
        heartbeat.write(&sink).await?;
        let beating = {
            let sink = sink.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Heartbeat::interval(hold)).await;
                    heartbeat.beat += 1;
                    if let Err(e) = heartbeat.write(&sink).await {
                        tracing::warn!("heartbeat not written (claims may be taken over): {e}");
                    }
                }
            })
        };
        Ok(Arc::new(Claims {
            sink,
            run_id,
            hold,
            liveness: Liveness::new(hold),
            held: Mutex::new(HashMap::new()),
            empty_part,
            beating: Mutex::new(Some(beating)),
        }))
    }

    /// This run's id, as written in its entries.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// How often to ask again about documents [`Claim::Held`] by others: a quarter of the hold.
    pub fn poll_interval(&self) -> Duration {
        Heartbeat::interval(self.hold)
    }

    /// Claims `doc` for this run unless a live run holds it or it is committed.
    pub async fn claim(&self, doc: &DocumentKey) -> Result<Claim, SinkError> {
        let key = doc.clone();
        let log = ClaimLog::of(&self.sink, &key);
        let entry = Entry::Claim {
            run_id: self.run_id.clone(),
            doc_uri: key.uri.clone(),
            doc_version: key.version.clone(),
        };
        // Most documents were never claimed: try the first entry before reading the log.
        if let Created::Written = log.append(&self.sink, 1, &entry).await? {
            self.held_documents().insert(key, 1);
            return Ok(Claim::Claimed {
                taken_over_from: None,
            });
        }
        loop {
            let (number, previous) = match self.examine(&log).await? {
                Examined::Held(run_id) => return Ok(Claim::Held { run_id }),
                Examined::Committed(run_id) => return Ok(Claim::Committed { run_id }),
                Examined::Open {
                    number,
                    previous,
                    void_part,
                } => {
                    if let Some(part) = void_part {
                        if let Created::AlreadyExists = self.write_empty_part(&part).await? {
                            // Its run wrote it after all (or another taker voided it): look again.
                            continue;
                        }
                    }
                    (number, previous)
                }
            };
            if let Created::Written = log.append(&self.sink, number, &entry).await? {
                self.held_documents().insert(key, number);
                return Ok(Claim::Claimed {
                    taken_over_from: previous,
                });
            }
        }
    }

    /// Where `doc` stands, without claiming it.
    pub async fn status(&self, doc: &DocumentKey) -> Result<DocumentState, SinkError> {
        let log = ClaimLog::of(&self.sink, doc);
        Ok(match self.examine(&log).await? {
            Examined::Open { .. } => DocumentState::Open,
            Examined::Held(run_id) => DocumentState::Held { run_id },
            Examined::Committed(run_id) => DocumentState::Committed { run_id },
        })
    }

    /// Stops the heartbeat and marks this run ended, so its remaining claims are free at once.
    pub async fn end(&self) {
        self.stop_beating();
        let heartbeat = Heartbeat {
            run_id: self.run_id.clone(),
            beat: u64::MAX,
            hold_ms: 0,
            ended: true,
            pid: std::process::id(),
        };
        if let Err(e) = heartbeat.write(&self.sink).await {
            tracing::warn!(
                "could not mark run {} ended; its unfinished documents stay held for {} s: {e}",
                self.run_id,
                self.hold.as_secs()
            );
        }
    }

    /// Appends a `commit` entry naming `part` for each document, in order. Documents another
    /// run took over are [`Sealed::Lost`].
    pub(crate) async fn seal(
        &self,
        docs: &[&DocumentKey],
        part: &str,
    ) -> Result<Vec<Sealed>, SinkError> {
        let numbers = {
            let held = self.held_documents();
            docs.iter()
                .map(|key| {
                    held.get(*key).copied().ok_or_else(|| {
                        SinkError::InvalidRows(format!(
                            "{} was committed without being claimed by this run",
                            key.uri
                        ))
                    })
                })
                .collect::<Result<Vec<u64>, SinkError>>()?
        };
        let entry = Entry::Commit {
            run_id: self.run_id.clone(),
            part: part.to_owned(),
        };
        let sealed: Vec<Result<Sealed, SinkError>> =
            futures::stream::iter(docs.iter().zip(numbers))
                .map(|(key, number)| self.seal_one(key, number + 1, &entry))
                .buffered(SEAL_CONCURRENCY)
                .collect()
                .await;
        sealed.into_iter().collect()
    }

    async fn seal_one(
        &self,
        key: &DocumentKey,
        number: u64,
        entry: &Entry,
    ) -> Result<Sealed, SinkError> {
        let log = ClaimLog::of(&self.sink, key);
        let sealed = match log.append(&self.sink, number, entry).await? {
            Created::Written => Sealed::Kept,
            Created::AlreadyExists => Sealed::Lost {
                by: match log.read(&self.sink, number).await? {
                    Entry::Claim { run_id, .. } | Entry::Commit { run_id, .. } => run_id,
                },
            },
        };
        self.held_documents().remove(key);
        Ok(sealed)
    }

    async fn examine(&self, log: &ClaimLog) -> Result<Examined, SinkError> {
        let Some(last) = log.last(&self.sink).await? else {
            return Ok(Examined::Open {
                number: 1,
                previous: None,
                void_part: None,
            });
        };
        let number = last.number + 1;
        Ok(match last.entry {
            Entry::Claim { run_id, .. } => {
                if self.is_live(&run_id).await? {
                    Examined::Held(run_id)
                } else {
                    Examined::Open {
                        number,
                        previous: Some(run_id),
                        void_part: None,
                    }
                }
            }
            Entry::Commit { run_id, part } => match self.part_rows(&part).await? {
                Some(rows) if rows > 0 => Examined::Committed(run_id),
                // Voided by a taker that stopped before appending its claim.
                Some(_) => Examined::Open {
                    number,
                    previous: Some(run_id),
                    void_part: None,
                },
                None if self.is_live(&run_id).await? => Examined::Held(run_id),
                None => Examined::Open {
                    number,
                    previous: Some(run_id),
                    void_part: Some(part),
                },
            },
        })
    }

    async fn is_live(&self, run_id: &str) -> Result<bool, SinkError> {
        Ok(run_id == self.run_id || !self.liveness.has_stopped(&self.sink, run_id).await?)
    }

    /// Rows in a part, `None` when it is not there.
    async fn part_rows(&self, part: &str) -> Result<Option<i64>, SinkError> {
        let path = self.sink.child(part);
        let object = match self.sink.store().head(&path).await {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.sink.error(e).into()),
        };
        let builder = open_part(&self.sink, &object).await?;
        Ok(Some(builder.metadata().file_metadata().num_rows()))
    }

    async fn write_empty_part(&self, part: &str) -> Result<Created, SinkError> {
        let path = self.sink.child(part);
        put_create_only(&self.sink, &path, self.empty_part.clone())
            .await
            .map_err(|e| SinkError::Write {
                url: self.sink.url_of(&path).to_string(),
                message: e.to_string(),
            })
    }

    fn stop_beating(&self) {
        let beating = self
            .beating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(beating) = beating {
            beating.abort();
        }
    }

    fn held_documents(&self) -> std::sync::MutexGuard<'_, HashMap<DocumentKey, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("sink", &self.sink.display())
            .field("run_id", &self.run_id)
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.stop_beating();
    }
}

/// Writes a scratch object create-only twice: the second write must be refused. A store that
/// accepts it (an S3-compatible server ignoring `If-None-Match`) cannot fence overlapping runs.
async fn probe_create_only(sink: &Location, run_id: &str) -> Result<(), SinkError> {
    let path = sink.child(&format!("{CLAIMS_DIR}/runs/{run_id}.probe"));
    let url = sink.url_of(&path).to_string();
    let unsupported = |detail: String| SinkError::NoCreateOnly {
        url: url.clone(),
        detail,
    };
    let failed = |e: object_store::Error| match e {
        object_store::Error::NotImplemented { .. } => unsupported(e.to_string()),
        e => SinkError::Write {
            url: url.clone(),
            message: e.to_string(),
        },
    };
    let write = || put_create_only(sink, &path, Bytes::new());
    if let Created::AlreadyExists = write().await.map_err(failed)? {
        return Err(SinkError::Write {
            url: url.clone(),
            message: "a scratch object of this run is already there".into(),
        });
    }
    if let Created::Written = write().await.map_err(failed)? {
        return Err(unsupported("a second create-only write succeeded".into()));
    }
    if let Err(e) = sink.store().delete(&path).await {
        tracing::debug!("{url}: scratch object not deleted: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use docpipe_store::{StoreOptions, Stores};

    use docpipe_core::DocumentRef;

    use super::*;
    use crate::{read_rows, Sink, SinkOptions};

    const SINK: &str = "memory:///sink";

    async fn claims(stores: &Stores, run_id: &str) -> (Sink, Arc<Claims>) {
        let mut sink = Sink::open(stores, SinkOptions::new(SINK)).unwrap();
        let claims = sink
            .start_claims(run_id, Duration::from_secs(60))
            .await
            .unwrap();
        (sink, claims)
    }

    #[tokio::test]
    async fn a_pending_part_of_an_ended_run_is_voided_before_its_documents_are_taken_over() {
        let stores = Stores::new(StoreOptions::quick());
        let doc = DocumentKey::of(&DocumentRef::new("/in/a.pdf"));
        let part = "parts/all-0000000000001-0000000000000001.parquet";
        let (_a, claims_a) = claims(&stores, "run-a").await;
        claims_a.claim(&doc).await.unwrap();
        let sealed = claims_a.seal(&[&doc], part).await.unwrap();
        assert_eq!(sealed, vec![Sealed::Kept]);
        // Run a stops between its commit entry and its part.
        claims_a.end().await;

        let (_b, claims_b) = claims(&stores, "run-b").await;
        assert_eq!(
            claims_b.status(&doc).await.unwrap(),
            DocumentState::Open,
            "a commit entry without its part does not commit"
        );
        assert_eq!(
            claims_b.claim(&doc).await.unwrap(),
            Claim::Claimed {
                taken_over_from: Some("run-a".into())
            }
        );
        assert_eq!(claims_b.part_rows(part).await.unwrap(), Some(0));
        assert!(
            matches!(
                claims_a.write_empty_part(part).await.unwrap(),
                Created::AlreadyExists
            ),
            "run a's part can no longer be created"
        );
        assert!(read_rows(&stores, SINK).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_document_not_claimed_cannot_be_sealed() {
        let stores = Stores::new(StoreOptions::quick());
        let (_a, claims_a) = claims(&stores, "run-a").await;
        let key = DocumentKey::of(&DocumentRef::new("/in/a.pdf"));
        let err = claims_a.seal(&[&key], "parts/x.parquet").await.unwrap_err();
        assert!(matches!(err, SinkError::InvalidRows(_)), "{err}");
    }
}
