//! Object-store prefixes (`s3://…/idefics2-8b/`, `gs://…`, `az://…`): the prefix is listed (one
//! request), and each file the checkpoint needs is copied into docpipe's model cache unless a
//! copy of the same object (same etag and size) is already there. The cache mirrors the hub's:
//!
//! ```text
//! $DOCPIPE_MODEL_CACHE/<scheme>/<bucket>/<prefix>/
//!   blobs/<sha256 of size and etag>          one per object version
//!   snapshots/<sha256 of the names and blobs>/config.json -> ../../blobs/…
//! ```
//!
//! so a second run, or another process on the machine, downloads nothing, and a checkpoint
//! rewritten in place gets a new snapshot (and a new name in the `model` column). Downloads go
//! to `<blob>.part` under a lock and resume from its length with a range request pinned to the
//! listed etag; only a complete file of the listed size is renamed into place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use docpipe_store::object_store::{GetOptions, GetRange, ObjectMeta};
use docpipe_store::{Location, Stores};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::files::{self, Missing, Weights, INDEX, SINGLE};
use crate::verify::{self, Expected};
use crate::{Checkpoint, HubError, Settings};

/// Attempts per file when the connection drops mid-download (each resumes where the last one
/// stopped); requests themselves are retried by the store client too.
const ATTEMPTS: usize = 3;

pub(crate) fn resolve(url: &str, settings: &Settings) -> Result<Checkpoint, HubError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HubError::io(&settings.bucket_cache))?;
    runtime.block_on(resolve_async(url, settings))
}

async fn resolve_async(url: &str, settings: &Settings) -> Result<Checkpoint, HubError> {
    let stores = Stores::new(settings.store.clone());
    let location = stores.open(url)?;
    let origin = location.display().trim_end_matches('/').to_owned();
    let listing = location
        .store()
        .list_with_delimiter(Some(location.prefix()))
        .await
        .map_err(|e| location.error(e))?;
    let objects: BTreeMap<String, ObjectMeta> = listing
        .objects
        .into_iter()
        .filter_map(|meta| Some((location.relative(&meta.location)?, meta)))
        .collect();
    let not_found = |file: &str| HubError::FileNotFound {
        origin: origin.clone(),
        file: file.to_owned(),
    };
    let (small, weights) =
        files::plan(objects.keys().map(String::as_str)).map_err(|Missing(file)| not_found(file))?;
    let copy = Copy {
        location: &location,
        origin: &origin,
        blobs: cache_root(&location, &settings.bucket_cache).join("blobs"),
        progress: settings.progress,
    };
    let mut names: Vec<String> = small.iter().map(|f| f.to_string()).collect();
    let mut blobs = Vec::new();
    for file in &small {
        blobs.push(copy.fetch(file, &objects[*file]).await?);
    }
    let weight_files = match weights {
        Weights::Single => vec![SINGLE.to_owned()],
        Weights::Sharded => {
            // Copied with the small files: this only finds it in the cache.
            let index = copy.fetch(INDEX, &objects[INDEX]).await?;
            let bytes = std::fs::read(&index).map_err(HubError::io(&index))?;
            files::shards(&bytes).map_err(|message| HubError::Invalid {
                origin: origin.clone(),
                file: INDEX.to_owned(),
                message,
            })?
        }
    };
    for file in weight_files {
        let meta = objects.get(&file).ok_or_else(|| not_found(&file))?;
        blobs.push(copy.fetch(&file, meta).await?);
        names.push(file);
    }
    let snapshot = snapshot_id(&names, &blobs);
    let dir = copy.blobs.with_file_name("snapshots").join(&snapshot);
    std::fs::create_dir_all(&dir).map_err(HubError::io(&dir))?;
    for (name, blob) in names.iter().zip(&blobs) {
        let link = dir.join(name);
        if !link.exists() {
            let target = Path::new("../../blobs").join(blob.file_name().unwrap_or_default());
            std::os::unix::fs::symlink(target, &link).map_err(HubError::io(&link))?;
        }
    }
    Ok(Checkpoint {
        dir,
        model_id: Some(format!("{origin}@{}", &snapshot[..12])),
    })
}

/// `<cache>/<scheme>/<bucket>/<prefix>`: readable, and distinct for every prefix.
fn cache_root(location: &Location, cache: &Path) -> PathBuf {
    let url = location.url();
    let mut root = cache.join(url.scheme()).join(url.host_str().unwrap_or("_"));
    for part in location.prefix().parts() {
        root.push(part.as_ref());
    }
    root
}

/// A blob's name: the object version (etag, or the modification time for stores without
/// etags) and its size, hashed into a file name.
fn blob_name(meta: &ObjectMeta) -> String {
    let version = meta
        .e_tag
        .clone()
        .unwrap_or_else(|| meta.last_modified.to_rfc3339());
    hex(&Sha256::digest(format!("{}\0{version}", meta.size)))
}

/// The snapshot's name: a hash of which blob each file name links to.
fn snapshot_id(names: &[String], blobs: &[PathBuf]) -> String {
    let mut hasher = Sha256::new();
    for (name, blob) in names.iter().zip(blobs) {
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher.update(blob.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Copies objects of one prefix into its blob folder.
struct Copy<'a> {
    location: &'a Location,
    origin: &'a str,
    blobs: PathBuf,
    progress: bool,
}

impl Copy<'_> {
    /// The blob of `meta`, downloaded unless it is already cached.
    async fn fetch(&self, name: &str, meta: &ObjectMeta) -> Result<PathBuf, HubError> {
        let blob = self.blobs.join(blob_name(meta));
        if blob.exists() {
            return Ok(blob);
        }
        std::fs::create_dir_all(&self.blobs).map_err(HubError::io(&self.blobs))?;
        let lock_path = blob.with_extension("lock");
        let lock = std::fs::File::create(&lock_path).map_err(HubError::io(&lock_path))?;
        lock.lock().map_err(HubError::io(&lock_path))?;
        if blob.exists() {
            // Another process copied it while this one waited for the lock.
            return Ok(blob);
        }
        let part = blob.with_extension("part");
        let bar = self.progress_bar(name, meta.size);
        let mut attempt = 1;
        while let Err(error) = self.download(meta, &part, &bar).await {
            if attempt == ATTEMPTS || error.is_usage() {
                return Err(error);
            }
            tracing::info!(origin = self.origin, file = name, %error, "resuming");
            attempt += 1;
        }
        bar.finish_and_clear();
        if let Err(actual) =
            verify::check(&part, &Expected::Size(meta.size)).map_err(HubError::io(&part))?
        {
            let _ = std::fs::remove_file(&part);
            return Err(HubError::Corrupt {
                origin: self.origin.to_owned(),
                file: name.to_owned(),
                expected: Expected::Size(meta.size).to_string(),
                actual: actual.to_string(),
            });
        }
        std::fs::rename(&part, &blob).map_err(HubError::io(&blob))?;
        Ok(blob)
    }

    /// Appends the rest of the object to `part`, asking for the version that was listed.
    async fn download(
        &self,
        meta: &ObjectMeta,
        part: &Path,
        bar: &ProgressBar,
    ) -> Result<(), HubError> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(HubError::io(part))?;
        let mut offset = file.metadata().map_err(HubError::io(part))?.len();
        if offset > meta.size {
            // Left by an object of the same etag but another size: start over.
            file.set_len(0).map_err(HubError::io(part))?;
            offset = 0;
        }
        bar.set_position(offset);
        if offset == meta.size {
            return Ok(());
        }
        let options = GetOptions {
            if_match: meta.e_tag.clone(),
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let object = self.location.at(meta.location.clone());
        let result = self
            .location
            .store()
            .get_opts(&meta.location, options)
            .await
            .map_err(|e| object.error(e))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| object.error(e))?;
            file.write_all(&chunk).map_err(HubError::io(part))?;
            bar.inc(chunk.len() as u64);
        }
        file.flush().map_err(HubError::io(part))
    }

    fn progress_bar(&self, name: &str, size: u64) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(size).with_message(name.to_owned());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
        ) {
            bar.set_style(style);
        }
        bar
    }
}
