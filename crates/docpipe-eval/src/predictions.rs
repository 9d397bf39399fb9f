//! Prediction files in the official DocVQA submission format:
//! `[{"questionId": 123, "answer": "..."}, ...]`.

use docpipe_store::{StoreError, Stores};
use serde::{Deserialize, Serialize};

/// Why a predictions file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    /// The file cannot be opened or read (absent, denied, unreachable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not a JSON list of `{"questionId", "answer"}` objects.
    #[error("{file}: not a DocVQA predictions file ([{{\"questionId\": int, \"answer\": string}}, ...]): {source}")]
    Json {
        /// The predictions file.
        file: String,
        /// serde's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
}

impl PredictionsError {
    /// True when the file is at fault (exit 2), false when its storage could not be reached
    /// (exit 3).
    pub fn is_usage(&self) -> bool {
        match self {
            PredictionsError::Store(e) => e.is_usage(),
            PredictionsError::Json { .. } => true,
        }
    }
}

/// One submitted answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// DocVQA's `questionId` (a number, or a string holding one).
    #[serde(rename = "questionId", deserialize_with = "crate::ids::deserialize")]
    pub question_id: i64,
    /// The predicted answer, scored as it is (no clean-up here).
    pub answer: String,
}

/// Reads a predictions file from a local path or an object-store URL.
pub async fn read(stores: &Stores, location: &str) -> Result<Vec<Prediction>, PredictionsError> {
    let file = stores.open(location)?;
    let bytes = file.read().await?;
    parse(&bytes, file.display())
}

/// Parses predictions; `file` names the source in errors.
pub fn parse(bytes: &[u8], file: &str) -> Result<Vec<Prediction>, PredictionsError> {
    serde_json::from_slice(bytes).map_err(|source| PredictionsError::Json {
        file: file.to_owned(),
        source,
    })
}

/// The submission file (`predictions.json`) for these answers, in the order given.
pub fn submission_json(predictions: &[Prediction]) -> String {
    serde_json::to_string_pretty(predictions).expect("predictions serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_integer_and_string_ids_and_round_trips() {
        let parsed = parse(
            br#"[{"questionId": 1, "answer": "a"}, {"questionId": "2", "answer": "b"}]"#,
            "p.json",
        )
        .unwrap();
        assert_eq!(parsed[1].question_id, 2);
        assert_eq!(
            parse(submission_json(&parsed).as_bytes(), "x").unwrap(),
            parsed
        );
    }

    #[test]
    fn malformed_file_names_the_file_and_position() {
        let err = parse(b"[{\"questionId\": 1,\n \"answer\": 3}]", "preds.json").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, PredictionsError::Json { .. }));
        assert!(message.contains("preds.json"), "{message}");
        assert!(message.contains("line 2"), "{message}");
        let err = parse(br#"[{"questionId": "x1", "answer": "a"}]"#, "p.json").unwrap_err();
        assert!(err.to_string().contains("not an integer"), "{err}");
    }
}
