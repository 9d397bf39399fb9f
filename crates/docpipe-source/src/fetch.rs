//! Making a listed document available as a local file, because the render workers take paths.
//! Local documents are used in place; remote ones are streamed to a temporary file with
//! `If-Match` on the listed etag, so the version written to the output is the version read.

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
    /// The local file to render: the document itself, or its temporary copy.
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

    /// Downloads go to `temp_dir`, e.g. a large local disk rather than a small `/tmp`.
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
