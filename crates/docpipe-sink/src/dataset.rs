//! The dataset manifest of a sharded run: `manifest.json`, written by `docpipe commit` once
//! every shard has written its own `manifest-shard-I-of-N.json`.
//!
//! Shards run as independent processes under a scheduler and never talk to each other; the
//! only shared state is the sink location. So completeness is read from there: a shard is
//! complete when its create-only manifest exists, names the same shard count as the others,
//! lists parts that are all present, and its report shows no listed document left undone.

use std::collections::HashSet;
use std::fmt;
use std::time::SystemTime;

use docpipe_core::Shard;
use docpipe_store::{Location, Stores};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::create_only::{put_json_create_only, Created};
use crate::report::{RunManifest, RunReport};
use crate::resume::{part_objects, PartInfo};
use crate::SinkError;

/// The dataset manifest's name under the sink location.
const DATASET_MANIFEST: &str = "manifest.json";

/// `manifest.json` of a sharded run: every shard's parts, in shard order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// The shard count N.
    pub shards: u32,
    /// The key columns of the parts, in order, as the first shard's manifest gives them.
    pub key_columns: Vec<String>,
    /// Rows over every shard's parts.
    pub rows: u64,
    /// Documents over every shard's parts.
    pub documents: u64,
    /// Unix time in milliseconds.
    pub committed_at_ms: u64,
    /// One entry per shard, 0 to N-1.
    pub shard_manifests: Vec<ShardEntry>,
}

/// One shard as the dataset manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// `I/N`.
    pub shard: String,
    /// The shard manifest, relative to the sink location.
    pub manifest: String,
    /// The run that completed the shard and wrote its manifest.
    pub run_id: String,
    /// The shard's `model` column value.
    pub model: String,
    /// Rows in the shard's parts.
    pub rows: u64,
    /// Documents in the shard's parts.
    pub documents: u64,
    /// The shard's parts, as its manifest lists them.
    pub parts: Vec<PartInfo>,
}

/// Why a shard keeps the dataset from being committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardProblem {
    /// No shard manifest: the shard never ran, is still running, or died.
    Missing {
        /// The shard, `I/N`.
        shard: String,
    },
    /// A shard manifest is there but does not describe a complete shard of this dataset.
    Failed {
        /// The shard, `I/N`.
        shard: String,
        /// E.g. another shard count, a part listed but absent, documents left unprocessed.
        reason: String,
    },
}

impl fmt::Display for ShardProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardProblem::Missing { shard } => write!(f, "shard {shard}: missing (no manifest)"),
            ShardProblem::Failed { shard, reason } => write!(f, "shard {shard}: failed: {reason}"),
        }
    }
}

/// What [`commit_dataset`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetCommit {
    /// `manifest.json` was written.
    Written {
        /// Where: `<sink>/manifest.json`.
        url: String,
        /// What was written.
        manifest: DatasetManifest,
    },
    /// `manifest.json` was already there (create-only): nothing was written.
    AlreadyCommitted {
        /// The existing `<sink>/manifest.json`.
        url: String,
    },
    /// Some shards are missing or failed; nothing was written.
    Incomplete {
        /// One per shard at fault, in shard order.
        problems: Vec<ShardProblem>,
    },
}

/// Writes the dataset manifest under `location` once every shard is complete.
///
/// The shard count comes from `shards` (`--shards N`) or else from the shard manifests; with
/// neither (or with a count of 0), [`SinkError::ShardCount`]. Shard manifests of another count are reported as
/// failed. Storage errors are returned as errors: the caller cannot tell "missing" from
/// "unreachable" otherwise.
pub async fn commit_dataset(
    stores: &Stores,
    location: &str,
    shards: Option<u32>,
) -> Result<DatasetCommit, SinkError> {
    let location = stores.open(location)?;
    let dataset_path = location.child(DATASET_MANIFEST);
    let dataset_url = location.url_of(&dataset_path).to_string();
    if exists(&location, &dataset_path).await? {
        return Ok(DatasetCommit::AlreadyCommitted { url: dataset_url });
    }
    let found = shard_manifests(&location).await?;
    let shard_count_error = |reason: String| SinkError::ShardCount {
        url: location.display().to_owned(),
        reason,
    };
    let count = match shards {
        Some(0) => return Err(shard_count_error("--shards must be at least 1".into())),
        Some(count) => count,
        None if found.is_empty() => {
            return Err(shard_count_error(
                "no shard manifest yet; pass --shards N".into(),
            ))
        }
        None => shard_count(&found).ok_or_else(|| {
            let names: Vec<String> = found.iter().map(|(shard, _)| shard.to_string()).collect();
            shard_count_error(format!(
                "the shard manifests disagree ({}); pass --shards N",
                names.join(", ")
            ))
        })?,
    };
    let present: HashSet<String> = part_objects(&location)
        .await?
        .iter()
        .filter_map(|object| location.relative(&object.location))
        .collect();
    let mut problems: Vec<ShardProblem> = found
        .iter()
        .filter(|(shard, _)| shard.count() != count)
        .map(|(shard, _)| ShardProblem::Failed {
            shard: shard.to_string(),
            reason: format!(
                "written for {} shards, the dataset has {count}",
                shard.count()
            ),
        })
        .collect();
    let mut entries = Vec::new();
    let mut key_columns = None;
    for shard in (0..count).filter_map(|index| Shard::new(index, count).ok()) {
        let Some(path) = found
            .iter()
            .find_map(|(found, path)| (*found == shard).then_some(path))
        else {
            problems.push(ShardProblem::Missing {
                shard: shard.to_string(),
            });
            continue;
        };
        match check_shard(&location, shard, path, &present).await? {
            Ok((entry, keys)) => {
                key_columns.get_or_insert(keys);
                entries.push(entry);
            }
            Err(reason) => problems.push(ShardProblem::Failed {
                shard: shard.to_string(),
                reason,
            }),
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|problem| match problem {
            ShardProblem::Missing { shard } | ShardProblem::Failed { shard, .. } => shard
                .split_once('/')
                .and_then(|(i, _)| i.parse::<u32>().ok()),
        });
        return Ok(DatasetCommit::Incomplete { problems });
    }
    let manifest = DatasetManifest {
        shards: count,
        key_columns: key_columns.unwrap_or_default(),
        rows: entries.iter().map(|entry| entry.rows).sum(),
        documents: entries.iter().map(|entry| entry.documents).sum(),
        committed_at_ms: u64::try_from(crate::unix_micros(SystemTime::now()) / 1000)
            .unwrap_or_default(),
        shard_manifests: entries,
    };
    write_create_only(&location, &dataset_path, &manifest).await
}

/// The shard count all found manifests agree on; `None` when there are none or they disagree.
fn shard_count(found: &[(Shard, Path)]) -> Option<u32> {
    let counts: HashSet<u32> = found.iter().map(|(shard, _)| shard.count()).collect();
    match counts.len() {
        1 => counts.into_iter().next(),
        _ => None,
    }
}

/// `manifest-shard-I-of-N.json` files directly under the location, by the shard their name
/// says.
async fn shard_manifests(location: &Location) -> Result<Vec<(Shard, Path)>, SinkError> {
    if location
        .local_path_of(location.prefix())
        .is_some_and(|path| !path.is_dir())
    {
        return Ok(Vec::new());
    }
    let listing = location
        .store()
        .list_with_delimiter(Some(location.prefix()))
        .await
        .map_err(|source| SinkError::List {
            url: location.display().to_owned(),
            source,
        })?;
    let mut found: Vec<(Shard, Path)> = listing
        .objects
        .into_iter()
        .filter_map(|object| {
            let shard = shard_of_manifest_name(object.location.filename()?)?;
            Some((shard, object.location))
        })
        .collect();
    found.sort_by_key(|(shard, _)| (shard.count(), shard.index()));
    Ok(found)
}

/// `manifest-shard-3-of-8.json` → shard 3/8.
fn shard_of_manifest_name(name: &str) -> Option<Shard> {
    let spec = name
        .strip_prefix("manifest-shard-")?
        .strip_suffix(".json")?;
    let (index, count) = spec.split_once("-of-")?;
    Shard::new(index.parse().ok()?, count.parse().ok()?).ok()
}

/// The dataset entry and key columns of a shard whose manifest is at `path`, or why the shard
/// is not complete. Only storage failures are errors.
async fn check_shard(
    location: &Location,
    shard: Shard,
    path: &Path,
    present: &HashSet<String>,
) -> Result<Result<(ShardEntry, Vec<String>), String>, SinkError> {
    let Some(bytes) = read(location, path).await? else {
        return Ok(Err("its manifest disappeared while committing".into()));
    };
    let manifest: RunManifest = match serde_json::from_slice(&bytes) {
        Ok(manifest) => manifest,
        Err(e) => return Ok(Err(format!("unreadable manifest: {e}"))),
    };
    if manifest.shard.as_deref() != Some(shard.to_string().as_str()) {
        return Ok(Err(format!(
            "its manifest says shard {:?}",
            manifest.shard.as_deref().unwrap_or("none")
        )));
    }
    if let Some(part) = manifest
        .parts
        .iter()
        .find(|part| !present.contains(&part.path))
    {
        return Ok(Err(format!(
            "part {} is listed in its manifest but absent",
            part.path
        )));
    }
    let report_path = location.child(&format!("report-{}.json", shard.label()));
    if let Some(bytes) = read(location, &report_path).await? {
        if let Ok(report) = serde_json::from_slice::<RunReport>(&bytes) {
            let done = report.documents_done();
            if done < report.documents_listed {
                return Ok(Err(format!(
                    "its report says {} of {} listed documents were not processed",
                    report.documents_listed - done,
                    report.documents_listed
                )));
            }
        }
    }
    let entry = ShardEntry {
        shard: shard.to_string(),
        manifest: location.relative(path).unwrap_or_else(|| path.to_string()),
        run_id: manifest.run_id,
        model: manifest.model,
        rows: manifest.rows,
        documents: manifest.documents,
        parts: manifest.parts,
    };
    Ok(Ok((entry, manifest.key_columns)))
}

async fn exists(location: &Location, path: &Path) -> Result<bool, SinkError> {
    match location.store().head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(SinkError::Read {
            url: location.url_of(path).to_string(),
            message: e.to_string(),
        }),
    }
}

/// The whole object at `path`; `None` when it does not exist.
async fn read(location: &Location, path: &Path) -> Result<Option<Vec<u8>>, SinkError> {
    let error = |e: object_store::Error| SinkError::Read {
        url: location.url_of(path).to_string(),
        message: e.to_string(),
    };
    match location.store().get(path).await {
        Ok(result) => Ok(Some(result.bytes().await.map_err(error)?.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(error(e)),
    }
}

async fn write_create_only(
    location: &Location,
    path: &Path,
    manifest: &DatasetManifest,
) -> Result<DatasetCommit, SinkError> {
    let url = location.url_of(path).to_string();
    Ok(
        match put_json_create_only(location, path, manifest).await? {
            Created::Written => DatasetCommit::Written {
                url,
                manifest: manifest.clone(),
            },
            Created::AlreadyExists => DatasetCommit::AlreadyCommitted { url },
        },
    )
}
