//! [`TestStore`]: a fresh, empty store of one [`Backend`] (a temporary folder, an in-memory
//! store or a moto S3 bucket), named by URLs, so that a conformance test body written once
//! runs unchanged against each of them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use docpipe_store::object_store::{ObjectStoreExt, PutPayload};
use docpipe_store::{to_url, Location, StoreOptions, Stores};
use futures::TryStreamExt;

use crate::{MotoServer, TestkitError};

/// Numbers the buckets of [`Backend::S3`] stores, all on the process's shared moto server.
static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// A kind of store that docpipe reads documents from and writes outputs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The local filesystem, through `file://` URLs of a temporary folder.
    File,
    /// `memory://`: object_store's in-memory store.
    Memory,
    /// `s3://`: a bucket of its own on moto ([`MotoServer::shared`]).
    S3,
}

/// Where a store's data lives. A folder is deleted with its store; a bucket stays, unused, on
/// the shared server until the test process exits.
#[derive(Debug)]
enum Owner {
    Folder(tempfile::TempDir),
    Memory,
    Bucket,
}

/// An empty store of one backend and the [`Stores`] that reach it.
///
/// Every location a test opens must go through [`TestStore::stores`]: a `memory://` URL names
/// the in-memory store of the `Stores` that opens it (one per `Stores`, see [`Stores`]), so a
/// second `Stores` would see an empty store. Sharing the one instance also gives S3 the moto
/// endpoint, and is what a run does (one `Stores` for source and sink).
#[derive(Debug)]
pub struct TestStore {
    stores: Arc<Stores>,
    /// The URL of the store's root, ending in `/`.
    root: String,
    owner: Owner,
}

impl TestStore {
    /// A fresh store: a new temporary folder, a new in-memory store, or a new bucket. Fails
    /// when moto is not installed (see [`MotoServer::start`]).
    pub fn start(backend: Backend) -> Result<Self, TestkitError> {
        let folder_error = |message: String| TestkitError::Folder { message };
        Ok(match backend {
            Backend::File => {
                let folder = tempfile::tempdir().map_err(|e| folder_error(e.to_string()))?;
                let url = to_url(&folder.path().display().to_string())
                    .map_err(|e| folder_error(e.to_string()))?;
                Self::new(Owner::Folder(folder), url.as_str(), StoreOptions::quick())
            }
            Backend::Memory => Self::new(Owner::Memory, "memory://", StoreOptions::quick()),
            Backend::S3 => {
                let moto = MotoServer::shared()?;
                let bucket = format!("store-{}", BUCKETS.fetch_add(1, Ordering::Relaxed));
                moto.create_bucket(&bucket)?;
                let root = format!("s3://{bucket}");
                Self::new(Owner::Bucket, &root, moto.store_options())
            }
        })
    }

    /// `root` is the store's URL without the trailing `/`.
    fn new(owner: Owner, root: &str, options: StoreOptions) -> Self {
        Self {
            stores: Arc::new(Stores::new(options)),
            root: format!("{root}/"),
            owner,
        }
    }

    /// Which kind of store this is.
    pub fn backend(&self) -> Backend {
        match self.owner {
            Owner::Folder(_) => Backend::File,
            Owner::Memory => Backend::Memory,
            Owner::Bucket => Backend::S3,
        }
    }

    /// The `Stores` every location of this store must be opened with.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// The URL of `relative` (`/`-separated) in this store, e.g. `s3://conformance/in/a.pdf`;
    /// a trailing `/` names a prefix.
    pub fn url(&self, relative: &str) -> String {
        format!("{}{relative}", self.root)
    }

    /// The local path of `relative`, for the one backend whose objects are files.
    pub fn local_path(&self, relative: &str) -> Option<PathBuf> {
        match &self.owner {
            Owner::Folder(folder) => Some(folder.path().join(relative)),
            Owner::Memory | Owner::Bucket => None,
        }
    }

    /// Writes the object at `relative`, replacing any.
    ///
    /// # Panics
    /// When the store refuses the write: these helpers set up and inspect test data.
    pub async fn put(&self, relative: &str, body: impl Into<PutPayload>) {
        let object = self.open(relative);
        if let Err(e) = object.store().put(object.prefix(), body.into()).await {
            panic!("cannot write {object}: {e}");
        }
    }

    /// The whole object at `relative`.
    ///
    /// # Panics
    /// When it does not exist or cannot be read.
    pub async fn read(&self, relative: &str) -> Bytes {
        let object = self.open(relative);
        object
            .read()
            .await
            .unwrap_or_else(|e| panic!("cannot read {object}: {e}"))
    }

    /// Whether an object exists at `relative`.
    ///
    /// # Panics
    /// When the store cannot tell.
    pub async fn exists(&self, relative: &str) -> bool {
        let object = self.open(relative);
        match object.store().head(object.prefix()).await {
            Ok(_) => true,
            Err(docpipe_store::object_store::Error::NotFound { .. }) => false,
            Err(e) => panic!("cannot look up {object}: {e}"),
        }
    }

    /// Deletes the object at `relative`.
    ///
    /// # Panics
    /// When the store refuses.
    pub async fn delete(&self, relative: &str) {
        let object = self.open(relative);
        if let Err(e) = object.store().delete(object.prefix()).await {
            panic!("cannot delete {object}: {e}");
        }
    }

    /// The objects under the prefix `relative`, relative to the store's root, sorted.
    ///
    /// # Panics
    /// When the store cannot list.
    pub async fn list(&self, relative: &str) -> Vec<String> {
        let root = self.open("");
        let prefix = self.open(relative);
        let objects: Vec<_> = prefix
            .store()
            .list(Some(prefix.prefix()))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("cannot list {prefix}: {e}"));
        let mut names: Vec<String> = objects
            .iter()
            .filter_map(|object| root.relative(&object.location))
            .collect();
        names.sort();
        names
    }

    fn open(&self, relative: &str) -> Location {
        let url = self.url(relative);
        self.stores
            .open(&url)
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn helpers_write_read_list_and_delete() {
        for backend in [Backend::File, Backend::Memory, Backend::S3] {
            let store = TestStore::start(backend).unwrap();
            assert_eq!(store.backend(), backend);
            assert!(store.list("").await.is_empty(), "{backend:?}: not empty");
            store.put("a/b.txt", "bb").await;
            store.put("a/c/d.txt", "d").await;
            assert_eq!(&store.read("a/b.txt").await[..], b"bb");
            assert_eq!(store.list("a/").await, ["a/b.txt", "a/c/d.txt"]);
            store.delete("a/b.txt").await;
            assert!(!store.exists("a/b.txt").await);
            assert!(store.exists("a/c/d.txt").await);
            // A second location of the same store sees the same objects.
            let location = store.stores().open(&store.url("a/c/d.txt")).unwrap();
            assert_eq!(&location.read().await.unwrap()[..], b"d");
            assert_eq!(
                store.local_path("x").is_some(),
                backend == Backend::File,
                "{backend:?}"
            );
        }
    }
}
