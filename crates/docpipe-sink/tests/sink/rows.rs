//! Rows for sink tests: whole documents as a pipeline would commit them, and an order to
//! compare rows read back in.

use docpipe_core::{DocumentRef, Failure, FinishReason, Stage};
use docpipe_sink::OutputRow;

pub const CREATED_AT: i64 = 1_764_000_000_123_456;

/// A document with `pages` pages and two questions per page; page 2 (when there is one) fails
/// at render time.
pub fn document_rows(uri: &str, version: &str, pages: u32) -> Vec<OutputRow> {
    let mut doc = DocumentRef::new(uri);
    doc.version = Some(version.to_owned());
    doc.keys.insert("contract_id".into(), format!("id-{uri}"));
    let mut rows = Vec::new();
    for page in 1..=pages {
        for (id, question) in [("total", "What is the total?"), ("date", "What date?")] {
            let mut row = OutputRow::for_document(&doc, "run-1", "tiny@abc123", CREATED_AT);
            row.page = Some(page);
            row.page_count = Some(pages);
            row.task = "qa".into();
            row.question_id = Some(id.into());
            row.question = question.into();
            if page == 2 {
                row = row
                    .with_failure(&Failure::new(Stage::Render, uri, "page is corrupt").on_page(2));
            } else {
                row.answer = Some(format!("{id} of {uri} p{page}"));
                row.fields = Some("{\"total\": \"12\"}".into());
                row.finish_reason = Some(FinishReason::Stop);
                row.prompt_tokens = Some(100 + page);
                row.answer_tokens = Some(5);
                row.latency_ms = Some(12.5);
            }
            rows.push(row);
        }
    }
    rows
}

/// `rows` in a fixed order (document, page, question): parts are read back in path order,
/// which is not the order documents were committed in.
pub fn sorted(mut rows: Vec<OutputRow>) -> Vec<OutputRow> {
    rows.sort_by(|a, b| {
        (&a.doc_uri, a.page, &a.question_id).cmp(&(&b.doc_uri, b.page, &b.question_id))
    });
    rows
}
