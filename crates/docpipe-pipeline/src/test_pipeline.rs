//! The pipeline the unit tests run: its own text, so that editing `pipelines/demo.toml` (a
//! user-facing example) never breaks a unit test.

use crate::config::PipelineConfig;

/// Five queries per page: OCR, two questions, two fields. The tests count on exactly these.
pub const TEST_PIPELINE: &str = r#"
[source]
uri = "docs"

[model]
path = "model"
max_new_tokens = 16

[[task]]
kind = "ocr"

[[task]]
kind = "qa"
questions = [
    { id = "title", text = "What is the title of this document?" },
    { id = "date", text = "What date is written on this page?" },
]

[[task]]
kind = "fields"
fields = [
    { name = "sender" },
    { name = "total_amount", question = "What is the total amount?" },
]

[sink]
uri = "out"
"#;

/// Queries per page of [`TEST_PIPELINE`] for a document without questions of its own.
pub const QUERIES_PER_PAGE: usize = 5;

/// [`TEST_PIPELINE`] with `overrides` applied.
pub fn test_config(overrides: &[String]) -> PipelineConfig {
    PipelineConfig::load("test pipeline", TEST_PIPELINE, overrides).expect("the test pipeline")
}
