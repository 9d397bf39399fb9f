//! [`OutputRow`]: one output row in memory, one (document, page, task, question), with the
//! helpers that fill in a document's identity and a failure. Columns: docs/schema.md.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use docpipe_core::{DocumentRef, Failure, FinishReason, Stage};

/// One output row: one (document, page, task, question). Field names and meanings are those
/// of the output columns (see [`crate::output_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    /// The invocation that wrote the row: start time in Unix milliseconds (13 digits), `-`, process
    /// id (8 hex digits). A resumed run has a new one, so one dataset can hold several.
    pub run_id: String,
    /// The document: a full URL for listed remote objects, an absolute path for local files, a
    /// manifest entry as written (relative ones resolved against the manifest's folder).
    pub doc_uri: String,
    /// The object's etag when it was listed; `None` when the store gave none (e.g. a manifest entry
    /// whose object does not exist). Resume matches on `doc_uri` + `doc_version`.
    pub doc_version: Option<String>,
    /// 1-based; `None` when the document failed before its pages were known.
    pub page: Option<u32>,
    /// Pages in the document, whatever `render.max_pages` selected; `None` as for `page`.
    pub page_count: Option<u32>,
    /// The task's name (default: its kind, `ocr`, `qa` or `fields`).
    pub task: String,
    /// `None` for OCR.
    pub question_id: Option<String>,
    /// What was asked, before the task's prompt template: the question, the field's question, or
    /// for `ocr` the prompt itself. Empty on "no question" rows.
    pub question: String,
    /// `None` on error.
    pub answer: Option<String>,
    /// A JSON object, for field extraction.
    pub fields: Option<String>,
    /// Why generation stopped; `None` on failed rows.
    pub finish_reason: Option<FinishReason>,
    /// Prompt length in tokens, image tokens included; `None` on failed rows.
    pub prompt_tokens: Option<u32>,
    /// Generated tokens, the stopping end-of-sequence token included; `None` on failed rows.
    pub answer_tokens: Option<u32>,
    /// Wall time in milliseconds of the model batch that produced the answer, the same for every
    /// row of that batch (not a per-request time); `None` on failed rows.
    pub latency_ms: Option<f32>,
    /// The checkpoint that produced the row: `<folder>@<hash>` for a local folder,
    /// `org/name@<commit>` for a hub id, `<url>@<hash of etags>` for a bucket (docs/models.md).
    pub model: String,
    /// Where the row failed; `None` exactly when it has an answer.
    pub error_stage: Option<Stage>,
    /// A message a user can act on, naming the document (and page); `None` on answered rows.
    pub error: Option<String>,
    /// Microseconds since the Unix epoch, UTC (see [`unix_micros`]).
    pub created_at: i64,
    /// Key columns carried from the manifest (lake enrichment).
    pub keys: BTreeMap<String, String>,
}

impl OutputRow {
    /// A row about `doc` with its identity filled in (URI, version, keys) and everything that
    /// depends on the page and the answer left empty.
    pub fn for_document(doc: &DocumentRef, run_id: &str, model: &str, created_at: i64) -> Self {
        Self {
            run_id: run_id.to_owned(),
            doc_uri: doc.uri.clone(),
            doc_version: doc.version.clone(),
            page: None,
            page_count: None,
            task: String::new(),
            question_id: None,
            question: String::new(),
            answer: None,
            fields: None,
            finish_reason: None,
            prompt_tokens: None,
            answer_tokens: None,
            latency_ms: None,
            model: model.to_owned(),
            error_stage: None,
            error: None,
            created_at,
            keys: doc.keys.clone(),
        }
    }

    /// The document the row is about.
    pub fn document_key(&self) -> crate::DocumentKey {
        crate::DocumentKey {
            uri: self.doc_uri.clone(),
            version: self.doc_version.clone(),
        }
    }

    /// Marks the row as failed: no answer, the failure's stage and message, and its page when
    /// the failure names one.
    pub fn with_failure(mut self, failure: &Failure) -> Self {
        self.answer = None;
        self.fields = None;
        self.finish_reason = None;
        self.error_stage = Some(failure.stage);
        self.error = Some(failure.message.clone());
        if failure.page.is_some() {
            self.page = failure.page;
        }
        self
    }

    /// A rough in-memory size, used to bound how much a sink buffers before writing a part.
    pub(crate) fn approximate_bytes(&self) -> usize {
        let optional = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        64 + self.run_id.len()
            + self.doc_uri.len()
            + optional(&self.doc_version)
            + self.task.len()
            + optional(&self.question_id)
            + self.question.len()
            + optional(&self.answer)
            + optional(&self.fields)
            + self.model.len()
            + optional(&self.error)
            + self.keys.values().map(String::len).sum::<usize>()
    }
}

/// Microseconds since the Unix epoch (negative before 1970), the unit of `created_at`.
pub fn unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn finish_reason_from_str(text: &str) -> Option<FinishReason> {
    [FinishReason::Stop, FinishReason::Length]
        .into_iter()
        .find(|reason| reason.as_str() == text)
}
