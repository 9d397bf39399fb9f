//! Open an object store from a URL or a local path.
//!
//! Every input docpipe reads can live on local disk or on an object store, so callers hand over
//! one string and get back the store plus the object's path inside it. Credentials and endpoints
//! come only from the standard environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), which
//! `object_store` matches to its own config keys and ignores when they do not apply.

use std::sync::Arc;

use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

/// Prefixes of the environment variables passed to `object_store::parse_url_opts`.
const ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{location}: not a usable path or URL: {problem}")]
    BadLocation { location: String, problem: String },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: {source}")]
    Store {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },
}

/// An object (or prefix) on a store, with the URL it was opened from for messages.
#[derive(Clone)]
pub struct StoreLocation {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    pub url: Url,
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreLocation")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// The environment variables that configure stores: every `AWS_*`, `GOOGLE_*` and `AZURE_*`.
pub fn env_options() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(key, _)| ENV_PREFIXES.iter().any(|p| key.starts_with(p)))
        .collect()
}

/// Opens the store behind `location`: a URL with a scheme (`s3://`, `gs://`, `az://`,
/// `file://`, `memory://`, `https://`) or a local path, relative paths being taken from the
/// current directory. Configured from the environment ([`env_options`]).
pub fn open(location: &str) -> Result<StoreLocation, StoreError> {
    open_with(location, env_options())
}

/// [`open`] with explicit options (`object_store` config keys such as `aws_endpoint_url`, or
/// the environment variable names), for callers that do not configure through the environment.
pub fn open_with(
    location: &str,
    options: impl IntoIterator<Item = (String, String)>,
) -> Result<StoreLocation, StoreError> {
    let bad = |problem: String| StoreError::BadLocation {
        location: location.to_owned(),
        problem,
    };
    let url = match Url::parse(location) {
        // One-letter schemes are Windows drive letters, not URLs.
        Ok(url) if url.scheme().len() > 1 => url,
        _ => {
            let absolute = std::path::absolute(location).map_err(|e| bad(e.to_string()))?;
            Url::from_file_path(lexically_normal(&absolute))
                .map_err(|()| bad("not an absolute path".into()))?
        }
    };
    let (store, path) =
        object_store::parse_url_opts(&url, options).map_err(|e| bad(e.to_string()))?;
    Ok(StoreLocation {
        store: Arc::from(store),
        path,
        url,
    })
}

/// Resolves `.` and `..` without touching the file system (the object may not exist yet):
/// object-store paths reject both.
fn lexically_normal(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl StoreLocation {
    /// The location of `relative` (a `/`-separated path such as `documents/x.png`) inside this
    /// location, read as a folder.
    pub fn join(&self, relative: &str) -> Result<StoreLocation, StoreError> {
        let bad = |problem: String| StoreError::BadLocation {
            location: relative.to_owned(),
            problem,
        };
        let rel = Path::parse(relative).map_err(|e| bad(e.to_string()))?;
        let mut folder = self.url.clone();
        if !folder.path().ends_with('/') {
            folder.set_path(&format!("{}/", folder.path()));
        }
        let url = folder.join(relative).map_err(|e| bad(e.to_string()))?;
        Ok(StoreLocation {
            store: Arc::clone(&self.store),
            path: self.path.parts().chain(rel.parts()).collect(),
            url,
        })
    }

    /// The folder holding this object: where relative paths inside an annotation file point.
    pub fn parent(&self) -> StoreLocation {
        let parts: Vec<_> = self.path.parts().collect();
        let keep = parts.len().saturating_sub(1);
        StoreLocation {
            store: Arc::clone(&self.store),
            path: parts.into_iter().take(keep).collect(),
            url: self.url.join("./").unwrap_or_else(|_| self.url.clone()),
        }
    }

    /// Reads the whole object.
    pub async fn read(&self) -> Result<Vec<u8>, StoreError> {
        let result = match self.store.get(&self.path).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        result.map(|b| b.to_vec()).map_err(|e| self.error(e))
    }

    /// Writes the whole object in one request (an object is then complete or absent).
    pub async fn write(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store
            .put(&self.path, PutPayload::from(bytes))
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Turns a store error about this location into one that names its URL.
    pub fn error(&self, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                url: self.url.to_string(),
            },
            source => StoreError::Store {
                url: self.url.to_string(),
                source: Box::new(source),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_relative_path_becomes_file_url() {
        let loc = open("fixtures/./a/../x.json").unwrap();
        assert_eq!(loc.url.scheme(), "file");
        let cwd = std::env::current_dir().unwrap().join("fixtures/x.json");
        assert_eq!(loc.url.to_file_path().unwrap(), cwd);
        assert_eq!(loc.path.filename(), Some("x.json"));
    }

    #[test]
    fn join_and_parent_resolve_relative_paths() {
        let file = open("memory:///data/val_v1.0.json").unwrap();
        let root = file.parent();
        assert_eq!(root.path.as_ref(), "data");
        assert_eq!(root.url.as_str(), "memory:///data/");
        let image = root.join("documents/a.png").unwrap();
        assert_eq!(image.path.as_ref(), "data/documents/a.png");
        assert_eq!(image.url.as_str(), "memory:///data/documents/a.png");
        assert!(matches!(
            root.join("../x"),
            Err(StoreError::BadLocation { .. })
        ));
    }

    #[tokio::test]
    async fn written_objects_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let loc = open(dir.path().join("out/metrics.json").to_str().unwrap()).unwrap();
        loc.write(b"{}".to_vec()).await.unwrap();
        assert_eq!(loc.read().await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn reading_a_missing_object_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let loc = open(dir.path().join("absent.json").to_str().unwrap()).unwrap();
        assert!(matches!(loc.read().await, Err(StoreError::NotFound { .. })));
    }
}
