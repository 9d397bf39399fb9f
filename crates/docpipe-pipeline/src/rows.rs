//! A finished document → its output rows.

use std::collections::BTreeMap;

use docpipe_core::{DocumentRef, Failure, Stage};
use docpipe_sink::OutputRow;

use crate::engine::FinishedDocument;

/// One row per (page, query) of `doc`, in page then query order. Rows of a `fields` task also
/// carry all of their page's field answers as one JSON object (`null` for a field that failed).
pub fn output_rows(
    doc: &FinishedDocument,
    run_id: &str,
    model: &str,
    created_at: i64,
) -> Vec<OutputRow> {
    let mut fields: BTreeMap<(Option<u32>, &str), serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    for row in &doc.rows {
        let query = &doc.queries[row.query];
        if let Some(field) = &query.field {
            let answer = match &row.result {
                Ok(answer) => serde_json::Value::String(answer.generation.text.clone()),
                Err(_) => serde_json::Value::Null,
            };
            fields
                .entry((row.page, query.task.as_str()))
                .or_default()
                .insert(field.clone(), answer);
        }
    }
    doc.rows
        .iter()
        .map(|row| {
            let query = &doc.queries[row.query];
            let mut out = OutputRow::for_document(&doc.doc, run_id, model, created_at);
            out.page = row.page;
            out.page_count = doc.page_count;
            out.task = query.task.clone();
            out.question_id = query.question_id.clone();
            out.question = query.question.clone();
            match &row.result {
                Ok(answer) => {
                    let generation = &answer.generation;
                    out.answer = Some(generation.text.clone());
                    out.finish_reason = Some(generation.finish_reason);
                    out.prompt_tokens = Some(saturate(generation.prompt_tokens));
                    out.answer_tokens = Some(saturate(generation.token_ids.len()));
                    out.latency_ms = Some(answer.latency.as_secs_f32() * 1000.0);
                    out.fields = query
                        .field
                        .as_ref()
                        .and_then(|_| fields.get(&(row.page, query.task.as_str())))
                        .map(|map| serde_json::Value::Object(map.clone()).to_string());
                    out
                }
                Err(failure) => out.with_failure(failure),
            }
        })
        .collect()
}

/// The rows of a document that no task had a question for (its tasks are all `qa` tasks with
/// no configured questions, and the manifest gave it none): one error row per task, so that the
/// document is in the output, counted as failed, and committed like any other (a rerun skips
/// it instead of listing it again).
pub fn unasked_rows(
    doc: &DocumentRef,
    tasks: &[String],
    run_id: &str,
    model: &str,
    created_at: i64,
) -> Vec<OutputRow> {
    let failure = Failure::new(
        Stage::Prepare,
        &doc.uri,
        "no questions to ask: the task has none configured and the manifest has none for this document",
    );
    tasks
        .iter()
        .map(|task| {
            let mut row = OutputRow::for_document(doc, run_id, model, created_at);
            row.task = task.clone();
            row.with_failure(&failure)
        })
        .collect()
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use docpipe_core::{FinishReason, Generation};

    use super::*;
    use crate::engine::{Answer, RowOutcome};
    use crate::model::Family;
    use crate::tasks::TaskPlan;
    use crate::test_pipeline::{test_config, QUERIES_PER_PAGE};

    fn answer(text: &str) -> Result<Answer, Failure> {
        Ok(Answer {
            generation: Generation {
                text: text.into(),
                token_ids: vec![5, 6, 2],
                finish_reason: FinishReason::Stop,
                prompt_tokens: 70,
            },
            latency: Duration::from_millis(250),
        })
    }

    #[test]
    fn rows_carry_answers_failures_and_the_fields_object() {
        let config = test_config(&[]);
        let plan = TaskPlan::new(config.tasks, 16, Family::Idefics2.default_prompts());
        let mut doc_ref = DocumentRef::new("s3://b/a.pdf");
        doc_ref.version = Some("\"etag\"".into());
        doc_ref.keys.insert("id".into(), "42".into());
        let queries = Arc::new(plan.queries(&doc_ref));
        let failure = Failure::new(Stage::Infer, "s3://b/a.pdf", "boom").on_page(1);
        let doc = FinishedDocument {
            doc: Arc::new(doc_ref),
            page_count: Some(1),
            queries,
            rows: vec![
                RowOutcome {
                    page: Some(1),
                    query: 0,
                    result: answer("text"),
                },
                RowOutcome {
                    page: Some(1),
                    query: 1,
                    result: answer("A title"),
                },
                RowOutcome {
                    page: Some(1),
                    query: 2,
                    result: answer("1 May"),
                },
                RowOutcome {
                    page: Some(1),
                    query: 3,
                    result: Err(failure),
                },
                RowOutcome {
                    page: Some(1),
                    query: 4,
                    result: answer("12 EUR"),
                },
            ],
        };
        let rows = output_rows(&doc, "run", "tiny-1234", 7);
        assert_eq!(rows.len(), QUERIES_PER_PAGE);
        assert_eq!(rows[0].question_id, None);
        assert_eq!(rows[0].fields, None);
        assert_eq!(rows[1].answer.as_deref(), Some("A title"));
        assert_eq!(rows[1].answer_tokens, Some(3));
        assert_eq!(rows[1].keys.get("id").map(String::as_str), Some("42"));
        assert_eq!(rows[3].answer, None);
        assert_eq!(rows[3].error_stage, Some(Stage::Infer));
        assert_eq!(rows[3].page, Some(1));
        let fields: serde_json::Value =
            serde_json::from_str(rows[4].fields.as_deref().unwrap()).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({"sender": null, "total_amount": "12 EUR"})
        );
    }

    #[test]
    fn a_document_without_questions_gets_an_error_row_per_task() {
        let mut doc = DocumentRef::new("s3://b/empty.pdf");
        doc.keys.insert("id".into(), "7".into());
        let rows = unasked_rows(&doc, &["qa".into(), "checks".into()], "run", "m", 7);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].task, "checks");
        for row in &rows {
            assert_eq!((row.page, row.question_id.as_deref()), (None, None));
            assert_eq!(row.error_stage, Some(Stage::Prepare));
            assert!(row.error.as_deref().unwrap().contains("no questions"));
            assert_eq!(row.keys.get("id").map(String::as_str), Some("7"));
        }
    }
}
