//! The official `val_v1.0.json` layout (also `train_v1.0.json`, `test_v1.0.json`).

use std::collections::HashMap;

use docpipe_store::Location;
use serde::Deserialize;

use super::{DatasetError, DocVqaQuestion, ImageSource, PageGroup};

#[derive(Deserialize)]
struct AnnotationFile {
    data: Vec<RawQuestion>,
}

#[derive(Deserialize)]
struct RawQuestion {
    #[serde(rename = "questionId", deserialize_with = "crate::ids::deserialize")]
    question_id: i64,
    question: String,
    image: String,
    #[serde(rename = "docId", deserialize_with = "crate::ids::deserialize")]
    doc_id: i64,
    #[serde(default)]
    answers: Option<Vec<String>>,
    #[serde(default)]
    question_types: Vec<String>,
}

/// Reads the first `limit` questions of the file, images resolved against the file's folder.
pub(super) async fn read(
    file: &Location,
    limit: Option<usize>,
) -> Result<Vec<DocVqaQuestion>, DatasetError> {
    let bytes = file.read().await?;
    let parsed: AnnotationFile =
        serde_json::from_slice(&bytes).map_err(|source| DatasetError::Json {
            file: file.to_string(),
            source,
        })?;
    let root = file.parent();
    parsed
        .data
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|raw| {
            let image = root.join(&raw.image).map_err(|e| DatasetError::Malformed {
                file: file.to_string(),
                problem: format!("question {}: image path: {e}", raw.question_id),
            })?;
            Ok(DocVqaQuestion {
                question_id: raw.question_id,
                question: raw.question,
                answers: raw.answers,
                question_types: raw.question_types,
                doc_id: raw.doc_id,
                image: ImageSource::Stored(image),
            })
        })
        .collect()
}

/// Groups questions by image URL, groups in order of their first question.
pub(super) fn group_by_image(questions: Vec<DocVqaQuestion>) -> Vec<PageGroup> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<PageGroup> = Vec::new();
    for question in questions {
        let key = question.image.describe();
        match index.get(&key) {
            Some(&i) => groups[i].questions.push(question),
            None => {
                index.insert(key, groups.len());
                groups.push(PageGroup {
                    image: question.image.clone(),
                    questions: vec![question],
                });
            }
        }
    }
    groups
}
