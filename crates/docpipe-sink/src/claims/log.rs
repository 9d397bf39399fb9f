//! A document's claim log: numbered JSON entries under `_claims/docs/<id>/`, each written
//! create-only. The entry number is the fencing token: of two runs appending the same number,
//! exactly one succeeds, so a claim, a takeover and a commit are decided by the store alone.

use docpipe_store::Location;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::create_only::{put_json_create_only, Created};
use crate::resume::{list_objects, DocumentKey};
use crate::SinkError;

/// The folder under a sink that holds the claim logs and the run heartbeats. The leading `_`
/// keeps it out of table readers that treat the sink folder as a dataset (Spark, Hive).
pub(crate) const CLAIMS_DIR: &str = "_claims";

/// One entry of a claim log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// `run_id` holds the document while its heartbeat goes on.
    Claim {
        run_id: String,
        /// The document, for people reading the log.
        doc_uri: String,
        doc_version: Option<String>,
    },
    /// `run_id` puts the document's rows in `part` (relative to the sink). The document is
    /// committed once that part exists with rows; a part that a taker wrote first, empty, voids
    /// the entry.
    Commit { run_id: String, part: String },
}

/// The last entry of a log, with its number.
pub(crate) struct Last {
    pub(crate) number: u64,
    pub(crate) entry: Entry,
}

/// A document's claim log.
pub(crate) struct ClaimLog {
    dir: Path,
}

impl ClaimLog {
    /// The log of a document (its URI and version: a new version is a new document) under
    /// `sink`.
    pub(crate) fn of(sink: &Location, doc: &DocumentKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(doc.uri.as_bytes());
        hasher.update([0]);
        if let Some(version) = &doc.version {
            hasher.update([1]);
            hasher.update(version.as_bytes());
        }
        let id: String = hasher.finalize()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        // Two hex digits of fan-out keep local folders and listings small on large corpora.
        let dir = sink.child(&format!("{CLAIMS_DIR}/docs/{}/{}", &id[..2], &id[2..]));
        Self { dir }
    }

    /// The newest entry, or `None` for a document nobody claimed yet.
    pub(crate) async fn last(&self, sink: &Location) -> Result<Option<Last>, SinkError> {
        let objects = list_objects(sink, &self.dir).await?;
        let Some(number) = objects
            .iter()
            .filter_map(|object| entry_number(object.location.filename()?))
            .max()
        else {
            return Ok(None);
        };
        let entry = self.read(sink, number).await?;
        Ok(Some(Last { number, entry }))
    }

    /// Entry `number`, which must exist.
    pub(crate) async fn read(&self, sink: &Location, number: u64) -> Result<Entry, SinkError> {
        let location = sink.at(self.path(number));
        let bytes = location.read().await?;
        serde_json::from_slice(&bytes).map_err(|e| SinkError::Read {
            url: location.url().to_string(),
            message: format!("not a claim log entry: {e}"),
        })
    }

    /// Writes entry `number` unless some run already wrote it.
    pub(crate) async fn append(
        &self,
        sink: &Location,
        number: u64,
        entry: &Entry,
    ) -> Result<Created, SinkError> {
        put_json_create_only(sink, &self.path(number), entry).await
    }

    fn path(&self, number: u64) -> Path {
        self.dir.clone().join(format!("{number:010}.json"))
    }
}

fn entry_number(file_name: &str) -> Option<u64> {
    file_name.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use docpipe_store::{StoreOptions, Stores};

    use super::*;

    #[test]
    fn a_new_version_is_a_new_log() {
        let stores = Stores::new(StoreOptions::quick());
        let sink = stores.open("memory:///sink").unwrap();
        let doc = DocumentKey {
            uri: "s3://b/a.pdf".into(),
            version: None,
        };
        let v1 = DocumentKey {
            version: Some("1".into()),
            ..doc.clone()
        };
        let dirs: Vec<Path> = [&doc, &v1, &doc]
            .iter()
            .map(|d| ClaimLog::of(&sink, d).dir)
            .collect();
        assert_ne!(dirs[0], dirs[1]);
        assert_eq!(dirs[0], dirs[2]);
        assert!(dirs[0].as_ref().contains("_claims/docs/"), "{}", dirs[0]);
    }

    #[test]
    fn entry_numbers_sort_as_text() {
        assert_eq!(entry_number("0000000012.json"), Some(12));
        assert_eq!(entry_number("notes.txt"), None);
        let log = ClaimLog {
            dir: Path::from("x"),
        };
        assert!(log.path(9).as_ref() < log.path(10).as_ref());
    }
}
