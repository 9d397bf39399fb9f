//! Hub ids: the revision is resolved to a commit with one model-info request, then each file the
//! checkpoint needs and the cache lacks is downloaded with the `hf-hub` crate into the
//! `huggingface_hub` cache layout (`models--org--name/{blobs,refs,snapshots}`) and checked
//! against its etag before it is linked into the snapshot.
//!
//! `hf-hub` does the HTTP (endpoint, token, redirects), the resumable download (a `.part` file
//! next to the blob, continued with a range request after a dropped connection or a killed
//! process), the per-file lock and the progress bars. What it leaves out is added here: a blob
//! another commit already has is linked instead of downloaded again (as Python does), the bytes
//! are verified, `HF_HUB_OFFLINE` uses the cache alone, and hub errors are told apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::api::RepoInfo;
use hf_hub::{Cache, Repo, RepoType};

use crate::files::{self, Missing, Weights, CONFIG, INDEX, SINGLE};
use crate::verify::{self, Expected};
use crate::{Checkpoint, HubError, Settings};

/// Transient failures (connection refused or reset, timeouts, 5xx) are retried this many times,
/// after these pauses.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
];

/// How often `hf-hub` resumes a download whose connection dropped, within one attempt.
const RESUMES: usize = 3;

pub(crate) fn resolve(
    repo: &str,
    revision: &str,
    settings: &Settings,
) -> Result<Checkpoint, HubError> {
    let cache = Cache::new(settings.hub_cache.clone());
    let checkpoint = |dir: PathBuf, commit: &str| Checkpoint {
        dir,
        model_id: Some(format!("{repo}@{commit}")),
    };
    // A commit's files never change: when the cache has them all, no request is needed.
    if is_commit(revision) {
        let dir = snapshot_dir(&cache, repo, revision);
        if first_missing(&dir).is_none() {
            return Ok(checkpoint(dir, revision));
        }
    }
    if settings.offline {
        let dir = cached_snapshot(&cache, repo, revision, settings)?;
        let commit = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(checkpoint(dir, &commit));
    }
    let hub = Hub::new(repo, revision, cache, settings)?;
    let info = hub.info()?;
    let commit = info.sha.clone();
    let dir = snapshot_dir(&hub.cache, repo, &commit);
    let listing: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let (small, weights) =
        files::plan(listing.iter().copied()).map_err(|Missing(file)| hub.not_found(file))?;
    for file in small {
        hub.fetch(&commit, file, &dir)?;
    }
    let weight_files = match weights {
        Weights::Single => vec![SINGLE.to_owned()],
        Weights::Sharded => {
            let index = dir.join(INDEX);
            let bytes = std::fs::read(&index).map_err(HubError::io(&index))?;
            files::shards(&bytes).map_err(|message| HubError::Invalid {
                origin: hub.origin.clone(),
                file: INDEX.to_owned(),
                message,
            })?
        }
    };
    for file in &weight_files {
        if !listing.contains(&file.as_str()) {
            return Err(hub.not_found(file));
        }
        hub.fetch(&commit, file, &dir)?;
    }
    if !is_commit(revision) {
        let refs = hub.cache.repo(model_repo(repo, revision));
        let repo_dir = dir.ancestors().nth(2).unwrap_or(&settings.hub_cache);
        refs.create_ref(&commit)
            .map_err(HubError::io(repo_dir.join("refs").join(revision)))?;
    }
    tracing::debug!(repo, revision, commit, dir = %dir.display(), "checkpoint resolved");
    Ok(checkpoint(dir, &commit))
}

/// A full commit hash, which `huggingface_hub` never resolves through `refs/`.
fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn model_repo(repo: &str, revision: &str) -> Repo {
    Repo::with_revision(repo.to_owned(), RepoType::Model, revision.to_owned())
}

/// `snapshots/<commit>` of the repository in the cache.
fn snapshot_dir(cache: &Cache, repo: &str, commit: &str) -> PathBuf {
    cache.repo(model_repo(repo, commit)).pointer_path(commit)
}

/// The first file a checkpoint folder lacks (`config.json`, the tokenizer, the weights or a
/// shard the index names), or `None` when it is complete.
fn first_missing(dir: &Path) -> Option<String> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().exists())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match files::plan(names.iter().map(String::as_str)) {
        Err(Missing(file)) => Some(file.to_owned()),
        Ok((_, Weights::Single)) => None,
        Ok((_, Weights::Sharded)) => match std::fs::read(dir.join(INDEX))
            .ok()
            .and_then(|bytes| files::shards(&bytes).ok())
        {
            None => Some(INDEX.to_owned()),
            Some(shards) => shards.into_iter().find(|shard| !dir.join(shard).exists()),
        },
    }
}

/// `HF_HUB_OFFLINE`: the snapshot the cache's `refs/<revision>` (or the commit itself) names,
/// when it holds the whole checkpoint.
fn cached_snapshot(
    cache: &Cache,
    repo: &str,
    revision: &str,
    settings: &Settings,
) -> Result<PathBuf, HubError> {
    let not_cached = |file: &str| HubError::NotCached {
        origin: format!("{repo}@{revision}"),
        file: file.to_owned(),
        cache: settings.hub_cache.clone(),
    };
    let dir = if is_commit(revision) {
        snapshot_dir(cache, repo, revision)
    } else {
        cache
            .repo(model_repo(repo, revision))
            .get(CONFIG)
            .and_then(|config| config.parent().map(Path::to_path_buf))
            .ok_or_else(|| not_cached(CONFIG))?
    };
    match first_missing(&dir) {
        Some(file) => Err(not_cached(&file)),
        None => Ok(dir),
    }
}

/// One attempt's failure: worth retrying or final.
enum Failure {
    /// The network or the hub failed; a retry may succeed.
    Transient(String),
    /// Another process holds the file's download lock (`hf-hub` waited 5 s for it).
    Locked,
    /// Retrying cannot help.
    Final(HubError),
}

/// The hub client for one repository and revision.
struct Hub {
    api: Api,
    cache: Cache,
    repo: String,
    revision: String,
    /// `org/name@revision`, for messages.
    origin: String,
    endpoint: String,
    token_set: bool,
}

impl Hub {
    fn new(repo: &str, revision: &str, cache: Cache, settings: &Settings) -> Result<Hub, HubError> {
        let origin = format!("{repo}@{revision}");
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.clone())
            .with_progress(settings.progress)
            .with_retries(RESUMES)
            .with_user_agent("docpipe", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Invalid {
                origin: origin.clone(),
                file: "HF_ENDPOINT".into(),
                message: e.to_string(),
            })?;
        Ok(Hub {
            api,
            cache,
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            origin,
            endpoint: settings.endpoint.clone(),
            token_set: settings.token.is_some(),
        })
    }

    fn not_found(&self, file: &str) -> HubError {
        HubError::FileNotFound {
            origin: self.origin.clone(),
            file: file.to_owned(),
        }
    }

    /// The commit the revision points at and the repository's file names.
    fn info(&self) -> Result<RepoInfo, HubError> {
        self.retrying("model info", || {
            let response = self
                .api
                .repo(model_repo(&self.repo, &self.revision))
                .info_request()
                .config()
                .http_status_as_error(false)
                .build()
                .call();
            let mut response = response.map_err(|e| self.request_failure("model info", e))?;
            let status = response.status().as_u16();
            let error_code = response
                .headers()
                .get("x-error-code")
                .and_then(|code| code.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let (repo, revision, endpoint) = (
                self.repo.clone(),
                self.revision.clone(),
                self.endpoint.clone(),
            );
            match (status, error_code.as_str()) {
                (200, _) => response.body_mut().read_json::<RepoInfo>().map_err(|e| {
                    Failure::Final(HubError::Invalid {
                        origin: self.origin.clone(),
                        file: "model info".into(),
                        message: format!("not a hub answer ({e}); is HF_ENDPOINT a hub?"),
                    })
                }),
                (_, "RevisionNotFound") => Err(Failure::Final(HubError::RevisionNotFound {
                    repo,
                    revision,
                    endpoint,
                })),
                (_, "RepoNotFound") | (404, _) => Err(Failure::Final(HubError::RepoNotFound {
                    repo,
                    revision,
                    endpoint,
                })),
                (status, _) => Err(self.status_failure("model info", status)),
            }
        })
    }

    /// Makes `dir/file` (the snapshot's link to the blob) exist: nothing to do when it does; a
    /// link when another commit already brought the same blob; else a verified download.
    fn fetch(&self, commit: &str, file: &str, dir: &Path) -> Result<(), HubError> {
        let pointer = dir.join(file);
        if pointer.exists() {
            return Ok(());
        }
        // A link whose blob was deleted (e.g. by `huggingface-cli delete-cache`) is replaced.
        let _ = std::fs::remove_file(&pointer);
        let repo = self.api.repo(model_repo(&self.repo, commit));
        let url = repo.url(file);
        let metadata = self.retrying(file, || {
            self.api
                .metadata(&url)
                .map_err(|e| self.download_failure(file, e))
        })?;
        let blobs = self.cache.repo(model_repo(&self.repo, commit));
        let blob = blobs.blob_path(metadata.etag());
        let expected = Expected::from_etag(metadata.etag(), metadata.size() as u64);
        if blob.exists() || finish_partial(&blob, metadata.size() as u64, &expected)? {
            return link(&blob, &pointer);
        }
        tracing::info!(repo = %self.repo, commit, file, bytes = metadata.size(), "downloading");
        let downloaded = self.retrying(file, || {
            if pointer.exists() {
                // Another process finished it while this one waited for the lock.
                return Ok(pointer.clone());
            }
            repo.download(file)
                .map_err(|e| self.download_failure(file, e))
        })?;
        let blob = downloaded
            .canonicalize()
            .map_err(HubError::io(&downloaded))?;
        match verify::check(&blob, &expected).map_err(HubError::io(&blob))? {
            Ok(()) => Ok(()),
            Err(actual) => {
                // Neither the link nor the blob may stay: the next run downloads it again.
                let _ = std::fs::remove_file(&downloaded);
                let _ = std::fs::remove_file(&blob);
                Err(HubError::Corrupt {
                    origin: self.origin.clone(),
                    file: file.to_owned(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                })
            }
        }
    }

    /// Runs `attempt` until it succeeds or fails for good, retrying transient failures after
    /// the [`RETRY_PAUSES`], and waiting as long as another process holds a download lock.
    fn retrying<T>(
        &self,
        file: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, HubError> {
        let mut pauses = RETRY_PAUSES.iter();
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Locked) => {}
                Err(Failure::Transient(message)) => match pauses.next() {
                    Some(pause) => {
                        tracing::info!(origin = %self.origin, file, %message, "retrying");
                        std::thread::sleep(*pause);
                    }
                    None => {
                        return Err(HubError::Unreachable {
                            origin: self.origin.clone(),
                            file: file.to_owned(),
                            endpoint: self.endpoint.clone(),
                            message,
                        })
                    }
                },
            }
        }
    }

    fn download_failure(&self, file: &str, error: ApiError) -> Failure {
        match error {
            ApiError::RequestError(error) => self.request_failure(file, *error),
            ApiError::LockAcquisition(_) => Failure::Locked,
            ApiError::MissingHeader(header) | ApiError::InvalidHeader(header) => {
                Failure::Final(HubError::Invalid {
                    origin: self.origin.clone(),
                    file: file.to_owned(),
                    message: format!(
                        "the answer has no valid {header} header; is HF_ENDPOINT a hub?"
                    ),
                })
            }
            ApiError::IoError(error) => Failure::Final(HubError::Io {
                path: self.cache.path().join(file),
                source: error,
            }),
            other => Failure::Transient(other.to_string()),
        }
    }

    fn request_failure(&self, file: &str, error: ureq::Error) -> Failure {
        match error {
            ureq::Error::StatusCode(status) => self.status_failure(file, status),
            other => Failure::Transient(other.to_string()),
        }
    }

    fn status_failure(&self, file: &str, status: u16) -> Failure {
        match status {
            401 | 403 => Failure::Final(HubError::AccessDenied {
                origin: self.origin.clone(),
                file: file.to_owned(),
                status,
                hint: if self.token_set {
                    "the token has no access to this gated or private repository; request \
                     access on the hub, or use a token that has it"
                } else {
                    "the repository is gated or private; set HF_TOKEN (or run `huggingface-cli \
                     login`) with a token that has access"
                },
            }),
            404 => Failure::Final(self.not_found(file)),
            408 | 429 | 500.. => Failure::Transient(format!("HTTP {status}")),
            status => Failure::Final(HubError::Invalid {
                origin: self.origin.clone(),
                file: file.to_owned(),
                message: format!("HTTP {status}"),
            }),
        }
    }
}

/// Deals with a `.part` file as long as the blob or longer, left by a process stopped between
/// the last byte and the rename (a range request from its end would be refused): a complete,
/// verified one becomes the blob (true); any other is deleted, to be downloaded again. Holds
/// the blob's download lock (the one `hf-hub` takes) meanwhile.
fn finish_partial(blob: &Path, size: u64, expected: &Expected) -> Result<bool, HubError> {
    let part = blob.with_extension("part");
    if std::fs::metadata(&part).map_or(true, |meta| meta.len() < size) {
        return Ok(false);
    }
    let lock_path = blob.with_extension("lock");
    let lock = std::fs::File::create(&lock_path).map_err(HubError::io(&lock_path))?;
    lock.lock().map_err(HubError::io(&lock_path))?;
    if blob.exists() {
        return Ok(true);
    }
    let complete = match std::fs::metadata(&part) {
        Ok(meta) if meta.len() == size => verify::check(&part, expected)
            .map_err(HubError::io(&part))?
            .is_ok(),
        _ => false,
    };
    if complete {
        std::fs::rename(&part, blob).map_err(HubError::io(blob))?;
    } else {
        let _ = std::fs::remove_file(&part);
    }
    Ok(complete)
}

/// Links `pointer` (`snapshots/<commit>/<file>`) to `blob` the way the cache does, with a
/// relative symlink `../../blobs/<etag>`.
fn link(blob: &Path, pointer: &Path) -> Result<(), HubError> {
    let parent = pointer.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(HubError::io(parent))?;
    let target = Path::new("../../blobs").join(blob.file_name().unwrap_or_default());
    std::os::unix::fs::symlink(target, pointer).map_err(HubError::io(pointer))
}
