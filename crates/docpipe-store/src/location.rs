//! [`Location`]: a store plus the prefix a location string points at, with the path
//! arithmetic every stage uses (children, relative paths, joins that refuse `..`), and
//! [`to_url`], which turns local paths into absolute `file://` URLs without touching the disk.

use std::path::{Component, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use crate::StoreError;

/// A store plus the prefix inside it that a location string points at.
#[derive(Debug, Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// `scheme://authority/` of the store, used to turn paths back into URLs.
    root: Url,
    /// The location as given, for messages (user-info removed).
    display: String,
}

impl Location {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, prefix: Path, url: &Url) -> Self {
        let mut root = url.clone();
        root.set_path("/");
        root.set_query(None);
        root.set_fragment(None);
        Self {
            store,
            prefix,
            root,
            display: redact(url),
        }
    }

    /// The object store holding this location, shared with every location opened from the same
    /// bucket or container.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path inside the store that the location names (no leading or trailing `/`).
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// `relative` (`/`-separated) under this location's prefix.
    pub fn child(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// The part of `path` below this location's prefix, `/`-separated; `None` when `path` is
    /// not under the prefix.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<_> = path.prefix_match(&self.prefix)?.collect();
        Some(
            parts
                .iter()
                .map(|part| part.as_ref())
                .collect::<Vec<_>>()
                .join("/"),
        )
    }

    /// Another object or prefix in the same store, e.g. one found by listing this location.
    pub fn at(&self, path: Path) -> Location {
        Location {
            store: Arc::clone(&self.store),
            display: redact(&self.url_of(&path)),
            prefix: path,
            root: self.root.clone(),
        }
    }

    /// The folder holding the object this location names: what relative paths inside a file
    /// (an annotation file naming its images) are resolved against. The store's root is its
    /// own parent.
    pub fn parent(&self) -> Location {
        let parts: Vec<_> = self.prefix.parts().collect();
        let keep = parts.len().saturating_sub(1);
        self.at(parts.into_iter().take(keep).collect())
    }

    /// The location of `relative` (`/`-separated, e.g. `documents/a.png`) below this one.
    ///
    /// Unlike [`Location::child`], which percent-encodes whatever it is given, this rejects
    /// empty, `.` and `..` segments: such paths come from data files, and one that climbs out
    /// of the folder it is resolved against is an error in the data, not a path to follow.
    pub fn join(&self, relative: &str) -> Result<Location, StoreError> {
        let path = Path::parse(relative).map_err(|e| StoreError::InvalidLocation {
            location: relative.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(self.at(self.prefix.parts().chain(path.parts()).collect()))
    }

    /// The whole object this location names, in one request: for small files such as
    /// annotations or predictions (Parquet files are read in ranges, see
    /// [`crate::ParquetObjectFile`]).
    pub async fn read(&self) -> Result<Bytes, StoreError> {
        let result = match self.store.get(&self.prefix).await {
            Ok(result) => result.bytes().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| self.error(e))
    }

    /// A store error about this location, naming it; a missing object is
    /// [`StoreError::NotFound`].
    pub fn error(&self, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                location: self.display.clone(),
            },
            source => StoreError::Access {
                location: self.display.clone(),
                source,
            },
        }
    }

    /// The URL of the object or prefix this location names.
    pub fn url(&self) -> Url {
        self.url_of(&self.prefix)
    }

    /// The URL of an object in this store, e.g. `s3://bucket/a/b.pdf` or `file:///data/b.pdf`.
    pub fn url_of(&self, path: &Path) -> Url {
        let mut url = self.root.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .clear()
                .extend(path.parts().map(|part| part.as_ref().to_owned()));
        }
        url
    }

    /// The local filesystem path of an object when the store is the local filesystem.
    pub fn local_path_of(&self, path: &Path) -> Option<PathBuf> {
        if self.root.scheme() != "file" {
            return None;
        }
        self.url_of(path).to_file_path().ok()
    }

    /// True for `file://` locations, whose objects can be handed to tools as plain paths.
    pub fn is_local(&self) -> bool {
        self.root.scheme() == "file"
    }

    /// The location for messages: never carries credentials.
    pub fn display(&self) -> &str {
        &self.display
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Turns a location string into a URL: URLs (`scheme://...`) are parsed as they are, anything
/// else is a local path, made absolute against the current directory, with `.` and `..`
/// resolved without touching the file system (the object may not exist yet, and object-store
/// paths reject both).
pub fn to_url(location: &str) -> Result<Url, StoreError> {
    let invalid = |reason: String| StoreError::InvalidLocation {
        location: location.to_owned(),
        reason,
    };
    if location.trim().is_empty() {
        return Err(invalid("empty location".into()));
    }
    if location.contains("://") {
        return Url::parse(location).map_err(|e| invalid(e.to_string()));
    }
    let absolute = std::path::absolute(location).map_err(|e| invalid(e.to_string()))?;
    Url::from_file_path(lexically_normal(&absolute))
        .map_err(|()| invalid("not an absolute local path".into()))
}

fn lexically_normal(path: &std::path::Path) -> PathBuf {
    let mut out = PathBuf::new();
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

/// The URL without user name or password, for messages.
pub(crate) fn redact(url: &Url) -> String {
    let mut clean = url.clone();
    if clean.password().is_some() || !clean.username().is_empty() {
        // Both setters only fail for URLs that cannot have credentials in the first place.
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
    }
    clean.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_file_urls() {
        let url = to_url("some/dir").unwrap();
        assert_eq!(url.scheme(), "file");
        let expected = std::env::current_dir().unwrap().join("some/dir");
        assert_eq!(url.to_file_path().unwrap(), expected);
    }

    #[test]
    fn dot_segments_of_local_paths_are_resolved() {
        let url = to_url("fixtures/./a/../x.json").unwrap();
        let expected = std::env::current_dir().unwrap().join("fixtures/x.json");
        assert_eq!(url.to_file_path().unwrap(), expected);
    }

    #[test]
    fn urls_are_kept() {
        let url = to_url("s3://bucket/prefix/x.pdf").unwrap();
        assert_eq!(url.as_str(), "s3://bucket/prefix/x.pdf");
    }

    #[test]
    fn empty_and_malformed_locations_are_rejected() {
        assert!(matches!(
            to_url(""),
            Err(StoreError::InvalidLocation { .. })
        ));
        assert!(matches!(
            to_url("s3://bu cket/x"),
            Err(StoreError::InvalidLocation { .. })
        ));
    }

    #[test]
    fn credentials_never_reach_messages() {
        let url = Url::parse("https://user:secret@example.com/data").unwrap();
        let shown = redact(&url);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("user"), "{shown}");
    }
}
