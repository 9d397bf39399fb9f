//! [`ModelSource`]: what a `model.path` value names, decided from its spelling alone (and, for a
//! string that could be either, whether such a local folder exists).

use std::path::{Path, PathBuf};

use crate::HubError;

/// The revision a hub id without `@REVISION` means, as in every hub client.
pub const DEFAULT_REVISION: &str = "main";

/// Where a checkpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder on this machine (a path, or a `file://` URL).
    Local(PathBuf),
    /// A model repository on the Hugging Face hub (or the mirror `HF_ENDPOINT` names).
    Hub {
        /// `org/name`.
        repo: String,
        /// A branch, tag or commit; `main` when not given.
        revision: String,
    },
    /// A prefix in an object store (`s3://bucket/models/idefics2-8b/`), as docpipe-store opens it.
    Bucket(String),
}

impl ModelSource {
    /// Reads a `model.path` value. URLs are object stores (`file://` is a local folder); an
    /// existing folder is local; `org/name` or `org/name@REVISION` is a hub id, as in
    /// transformers; anything else is a local folder (one that is missing says so when loaded).
    pub fn parse(location: &str) -> Result<ModelSource, HubError> {
        let location = location.trim();
        let invalid = |reason: &str| HubError::InvalidSource {
            location: location.to_owned(),
            reason: reason.to_owned(),
        };
        if location.is_empty() {
            return Err(invalid("empty"));
        }
        if let Some(rest) = location.strip_prefix("file://") {
            return Ok(ModelSource::Local(PathBuf::from(rest)));
        }
        if location.contains("://") {
            return Ok(ModelSource::Bucket(location.to_owned()));
        }
        if Path::new(location).is_dir() {
            return Ok(ModelSource::Local(PathBuf::from(location)));
        }
        let (repo, revision) = match location.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (location, None),
        };
        if !is_repo_id(repo) {
            return Ok(ModelSource::Local(PathBuf::from(location)));
        }
        let revision = match revision {
            None => DEFAULT_REVISION,
            Some("") => return Err(invalid("empty revision after '@'")),
            Some(revision) => revision,
        };
        Ok(ModelSource::Hub {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        })
    }
}

/// `org/name` as the hub spells repository ids: two parts of letters, digits, `-`, `_` and `.`,
/// neither starting with `.` or `-` nor holding `..` or `--` (`huggingface_hub`'s
/// `validate_repo_id`).
fn is_repo_id(repo: &str) -> bool {
    let Some((org, name)) = repo.split_once('/') else {
        return false;
    };
    let part = |s: &str| {
        (1..=96).contains(&s.len())
            && !s.starts_with(['.', '-'])
            && !s.contains("..")
            && !s.contains("--")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    part(org) && part(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(repo: &str, revision: &str) -> ModelSource {
        ModelSource::Hub {
            repo: repo.into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn hub_ids_with_and_without_revision() {
        assert_eq!(
            ModelSource::parse("HuggingFaceM4/idefics2-8b").unwrap(),
            hub("HuggingFaceM4/idefics2-8b", "main")
        );
        assert_eq!(
            ModelSource::parse(" HuggingFaceM4/Idefics3-8B-Llama3@v1.0 ").unwrap(),
            hub("HuggingFaceM4/Idefics3-8B-Llama3", "v1.0")
        );
        assert_eq!(
            ModelSource::parse("org/name@refs/pr/3").unwrap(),
            hub("org/name", "refs/pr/3")
        );
        assert!(matches!(
            ModelSource::parse("org/name@"),
            Err(HubError::InvalidSource { .. })
        ));
    }

    #[test]
    fn urls_are_buckets_except_file_urls() {
        assert_eq!(
            ModelSource::parse("s3://models/idefics2-8b/").unwrap(),
            ModelSource::Bucket("s3://models/idefics2-8b/".into())
        );
        assert_eq!(
            ModelSource::parse("file:///models/x").unwrap(),
            ModelSource::Local("/models/x".into())
        );
    }

    #[test]
    fn paths_that_are_not_hub_ids_are_local() {
        for local in [
            "/models/x",
            "./org/name",
            "a/b/c",
            "../x/y",
            "org/.name",
            "a--b/c",
            "x",
        ] {
            assert_eq!(
                ModelSource::parse(local).unwrap(),
                ModelSource::Local(local.into()),
                "{local}"
            );
        }
    }
}
