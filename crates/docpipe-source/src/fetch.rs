use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use docpipe_core::DocumentRef;
use docpipe_store::Stores;
use futures::StreamExt;
use object_store::GetOptions;
use tokio::io::AsyncWriteExt;

use crate::FetchError;

/// A document available as a local file: the file itself for local documents, else a
/// temporary copy deleted when this is dropped.
#[derive(Debug)]
pub struct LocalCopy {
    path: PathBuf,
    temporary: Option<tempfile::TempPath>,
}

impl LocalCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file is a temporary download.
    pub fn is_temporary(&self) -> bool {
        self.temporary.is_some()
    }
}

impl Deref for LocalCopy {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Makes documents available as local files for the render workers, which take paths.
#[derive(Debug, Clone)]
pub struct Fetcher {
    stores: Arc<Stores>,
    temp_dir: PathBuf,
}

impl Fetcher {
    /// Downloads go to the system temporary folder.
    pub fn new(stores: Arc<Stores>) -> Self {
        Self::with_temp_dir(stores, std::env::temp_dir())
    }

    pub fn with_temp_dir(stores: Arc<Stores>, temp_dir: impl Into<PathBuf>) -> Self {
        Self {
            stores,
            temp_dir: temp_dir.into(),
        }
    }

    /// The document as a local file. Remote objects are streamed to a temporary file; when the
    /// document has a version, the download requires the object's etag to still match it, so
    /// the version written to the output is the one whose bytes were read.
    pub async fn fetch(&self, doc: &DocumentRef) -> Result<LocalCopy, FetchError> {
        let uri = &doc.uri;
        let location = self.stores.open(uri).map_err(|source| FetchError::Store {
            uri: uri.clone(),
            source,
        })?;
        if let Some(path) = location.local_path_of(location.prefix()) {
            if !path.is_file() {
                return Err(FetchError::NotFound { uri: uri.clone() });
            }
            return Ok(LocalCopy {
                path,
                temporary: None,
            });
        }
        let options = GetOptions {
            if_match: doc.version.clone(),
            ..GetOptions::default()
        };
        let got = location
            .store()
            .get_opts(location.prefix(), options)
            .await
            .map_err(|source| match source {
                object_store::Error::NotFound { .. } => FetchError::NotFound { uri: uri.clone() },
                object_store::Error::Precondition { .. } => FetchError::Changed {
                    uri: uri.clone(),
                    version: doc.version.clone().unwrap_or_default(),
                },
                source => FetchError::Download {
                    uri: uri.clone(),
                    source,
                },
            })?;
        let write_error = |source| FetchError::Write {
            uri: uri.clone(),
            source,
        };
        // Keep the extension: tools that sniff by name see the same file type.
        let suffix = Path::new(location.prefix().filename().unwrap_or_default())
            .extension()
            .map(|ext| format!(".{}", ext.to_string_lossy()))
            .unwrap_or_default();
        let temporary = tempfile::Builder::new()
            .prefix("docpipe-")
            .suffix(&suffix)
            .tempfile_in(&self.temp_dir)
            .map_err(write_error)?
            .into_temp_path();
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(write_error)?;
        let mut chunks = got.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|source| FetchError::Download {
                uri: uri.clone(),
                source,
            })?;
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        file.flush().await.map_err(write_error)?;
        Ok(LocalCopy {
            path: temporary.to_path_buf(),
            temporary: Some(temporary),
        })
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn local_documents_are_used_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.pdf");
        std::fs::write(&file, b"%PDF").unwrap();
        let fetcher = Fetcher::new(Arc::new(Stores::default()));
        let copy = fetcher
            .fetch(&DocumentRef::new(file.to_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(copy.path(), file);
        assert!(!copy.is_temporary());

        let err = fetcher
            .fetch(&DocumentRef::new(
                dir.path().join("b.pdf").to_str().unwrap(),
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("b.pdf"), "{err}");
    }

    #[tokio::test]
    async fn remote_documents_are_downloaded_and_checked_against_their_version() {
        let stores = Arc::new(Stores::default());
        let location = stores.open("memory:///docs").unwrap();
        let path = location.child("x.pdf");
        let put = location.store().put(&path, "first".into()).await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::with_temp_dir(Arc::clone(&stores), tmp.path());

        let mut doc = DocumentRef::new("memory:///docs/x.pdf");
        doc.version = put.e_tag.clone();
        let copy = fetcher.fetch(&doc).await.unwrap();
        assert!(copy.is_temporary());
        assert_eq!(copy.extension().unwrap(), "pdf");
        assert_eq!(std::fs::read(copy.path()).unwrap(), b"first");
        let copied = copy.path().to_path_buf();
        drop(copy);
        assert!(!copied.exists(), "temporary copy outlived its LocalCopy");

        location.store().put(&path, "second".into()).await.unwrap();
        let err = fetcher.fetch(&doc).await.unwrap_err();
        assert!(matches!(err, FetchError::Changed { .. }), "{err}");
    }
}
