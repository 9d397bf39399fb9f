//! Why a row has no answer: a [`Failure`] names the [`Stage`], the document, the page (if
//! any) and a message a user can act on. Failures travel down the same channels as answers,
//! so the sink writes one row per expected key whatever happened (docs/schema.md).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The pipeline stage where something went wrong; written to the `error_stage` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Fetching the document failed.
    Source,
    /// Opening the document or rendering a page failed.
    Render,
    /// Building the prompt or preprocessing the images was rejected, or the document had no
    /// question.
    Prepare,
    /// Generation failed, even for the request alone.
    Infer,
}

impl Stage {
    /// Every stage that can fail a row. The sink is not one: when it cannot write, no row is
    /// committed and the run stops (exit 3), so a rerun redoes the document.
    pub const ALL: [Stage; 4] = [Stage::Source, Stage::Render, Stage::Prepare, Stage::Infer];

    /// The value of the `error_stage` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Render => "render",
            Stage::Prepare => "prepare",
            Stage::Infer => "infer",
        }
    }

    /// The stage an `error_stage` value names.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that prevented an answer. Failures travel down the same channels as answers so
/// that the sink writes one row per expected key whatever happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{stage}: {doc_uri}{}: {message}", page.map(|p| format!(" page {p}")).unwrap_or_default())]
pub struct Failure {
    /// Where it failed; the `error_stage` column.
    pub stage: Stage,
    /// The document, as in the `doc_uri` column.
    pub doc_uri: String,
    /// 1-based page, when the failure concerns one page only.
    pub page: Option<u32>,
    /// A message a user can act on.
    pub message: String,
}

impl Failure {
    /// A failure of the whole document; [`Failure::on_page`] narrows it to one page.
    pub fn new(stage: Stage, doc_uri: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            stage,
            doc_uri: doc_uri.into(),
            page: None,
            message: message.into(),
        }
    }

    /// The same failure, concerning only the 1-based `page`.
    pub fn on_page(mut self, page: u32) -> Self {
        self.page = Some(page);
        self
    }
}
