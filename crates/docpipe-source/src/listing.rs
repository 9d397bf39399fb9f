//! Listing sources: a local folder or object-store prefix, listed recursively, filtered by
//! include globs relative to the prefix, sorted by URI so every run sees the same order.

use docpipe_core::{DocumentRef, Shard};
use docpipe_store::{Location, Stores};
use futures::TryStreamExt;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use object_store::ObjectMeta;

use crate::SourceError;

/// A local folder or object-store prefix to list recursively.
#[derive(Debug, Clone)]
pub struct ListingSpec {
    /// A local path or a `file://`, `s3://`, `gs://`, `az://` or `memory://` prefix.
    pub location: String,
    /// Globs matched against each object's path relative to `location` (`**/*.pdf`,
    /// `invoices/*.pdf`); `*` does not cross `/`. Empty keeps every object.
    pub include: Vec<String>,
    /// Match the globs ignoring ASCII case (`*.pdf` also keeps `SCAN.PDF`).
    pub case_insensitive: bool,
}

impl ListingSpec {
    /// Every object under `location`, no include filter.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            include: Vec::new(),
            case_insensitive: false,
        }
    }

    /// Keeps files with one of `extensions` (without the dot, any case) at any depth.
    pub fn with_extensions<S: AsRef<str>>(mut self, extensions: &[S]) -> Self {
        self.include = extensions
            .iter()
            .map(|ext| format!("**/*.{}", ext.as_ref().trim_start_matches('.')))
            .collect();
        self.case_insensitive = true;
        self
    }

    fn globs(&self) -> Result<Option<GlobSet>, SourceError> {
        if self.include.is_empty() {
            return Ok(None);
        }
        let mut set = GlobSetBuilder::new();
        for pattern in &self.include {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .case_insensitive(self.case_insensitive)
                .build()
                .map_err(|source| SourceError::Pattern {
                    pattern: pattern.clone(),
                    source,
                })?;
            set.add(glob);
        }
        let set = set.build().map_err(|source| SourceError::Pattern {
            pattern: self.include.join(", "),
            source,
        })?;
        Ok(Some(set))
    }
}

pub(crate) async fn list(
    spec: &ListingSpec,
    stores: &Stores,
    shard: Option<Shard>,
) -> Result<Vec<DocumentRef>, SourceError> {
    let globs = spec.globs()?;
    let location = stores.open(&spec.location)?;
    if location.is_local() {
        // A missing local folder lists as empty in object_store; say so instead.
        let folder = location.local_path_of(location.prefix());
        if !folder.as_ref().is_some_and(|folder| folder.is_dir()) {
            return Err(SourceError::MissingFolder {
                path: folder.map_or_else(
                    || spec.location.clone(),
                    |folder| folder.display().to_string(),
                ),
            });
        }
    }
    let objects: Vec<ObjectMeta> = location
        .store()
        .list(Some(location.prefix()))
        .try_collect()
        .await
        .map_err(|source| SourceError::List {
            location: location.display().to_owned(),
            source,
        })?;
    let mut documents: Vec<DocumentRef> = objects
        .into_iter()
        .filter(|object| {
            let Some(relative) = location.relative(&object.location) else {
                return false;
            };
            globs.as_ref().is_none_or(|globs| globs.is_match(&relative))
        })
        .map(|object| document(&location, object))
        .filter(|doc| shard.is_none_or(|shard| shard.owns(&doc.uri)))
        .collect();
    documents.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(documents)
}

fn document(location: &Location, object: ObjectMeta) -> DocumentRef {
    let uri = match location.local_path_of(&object.location) {
        Some(path) => path.display().to_string(),
        None => location.url_of(&object.location).to_string(),
    };
    let mut doc = DocumentRef::new(uri);
    doc.version = object.e_tag;
    doc.size = Some(object.size);
    doc
}

#[cfg(test)]
mod tests {
    //! What only a local folder has: plain paths, and folders that do not exist (an object
    //! store has no folders). Listing itself is tested on every backend by the conformance
    //! suite (tests/source/conformance/listing.rs).

    use std::fs;

    use super::*;

    #[tokio::test]
    async fn a_file_url_lists_the_same_files_as_the_path() {
        let dir = tempfile::tempdir().unwrap();
        for file in ["b.pdf", "a.pdf", "notes.txt", "sub/c.pdf", "sub/deep/D.PDF"] {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, file).unwrap();
        }
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let docs = list(&ListingSpec::new(url.as_str()), &Stores::default(), None)
            .await
            .unwrap();
        assert_eq!(docs.len(), 5);
        let path = ListingSpec::new(dir.path().to_str().unwrap());
        let by_path = list(&path, &Stores::default(), None).await.unwrap();
        assert_eq!(by_path, docs);
    }

    #[tokio::test]
    async fn missing_folder_and_bad_glob_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = list(
            &ListingSpec::new(missing.to_str().unwrap()),
            &Stores::default(),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SourceError::MissingFolder { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");

        let bad = ListingSpec {
            include: vec!["[".into()],
            ..ListingSpec::new(dir.path().to_str().unwrap())
        };
        let err = list(&bad, &Stores::default(), None).await.unwrap_err();
        assert!(matches!(err, SourceError::Pattern { .. }), "{err}");
    }
}
