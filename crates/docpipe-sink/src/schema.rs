//! The Arrow schema of the output rows and the conversion between [`OutputRow`]s and record
//! batches, both ways. This is the column contract documented in docs/schema.md: change the
//! two together.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, TimeUnit, UInt32Type};

use docpipe_core::Stage;

use crate::row::finish_reason_from_str;
use crate::{OutputRow, SinkError};

/// The output column names, in schema order (documented in `docs/schema.md`).
pub mod columns {
    /// `run_id` (utf8, never null): the invocation that wrote the row.
    pub const RUN_ID: &str = "run_id";
    /// `doc_uri` (utf8, never null): the document's URI or path.
    pub const DOC_URI: &str = "doc_uri";
    /// `doc_version` (utf8): the document's etag when listed.
    pub const DOC_VERSION: &str = "doc_version";
    /// `page` (uint32): 1-based page number.
    pub const PAGE: &str = "page";
    /// `page_count` (uint32): pages in the document.
    pub const PAGE_COUNT: &str = "page_count";
    /// `task` (utf8, never null): the task's name.
    pub const TASK: &str = "task";
    /// `question_id` (utf8): the question's id or the field's name; null for `ocr`.
    pub const QUESTION_ID: &str = "question_id";
    /// `question` (utf8, never null): what was asked, before the prompt template.
    pub const QUESTION: &str = "question";
    /// `answer` (utf8): the generated text; null exactly on failed rows.
    pub const ANSWER: &str = "answer";
    /// `fields` (utf8, a JSON object): a `fields` task's answers for the page.
    pub const FIELDS: &str = "fields";
    /// `finish_reason` (utf8): `stop` or `length`.
    pub const FINISH_REASON: &str = "finish_reason";
    /// `prompt_tokens` (uint32): prompt length, image tokens included.
    pub const PROMPT_TOKENS: &str = "prompt_tokens";
    /// `answer_tokens` (uint32): generated tokens.
    pub const ANSWER_TOKENS: &str = "answer_tokens";
    /// `latency_ms` (float32): wall time of the answer's model batch, in milliseconds.
    pub const LATENCY_MS: &str = "latency_ms";
    /// `model` (utf8, never null): checkpoint name and hash.
    pub const MODEL: &str = "model";
    /// `error_stage` (utf8): `source`, `render`, `prepare` or `infer`; null on answered rows.
    pub const ERROR_STAGE: &str = "error_stage";
    /// `error` (utf8): what went wrong, for a user; null on answered rows.
    pub const ERROR: &str = "error";
    /// `created_at` (timestamp µs UTC, never null): when the document reached the sink.
    pub const CREATED_AT: &str = "created_at";

    /// The 18 standard columns in schema order; key columns, when there are any, come before them.
    pub const ALL: [&str; 18] = [
        RUN_ID,
        DOC_URI,
        DOC_VERSION,
        PAGE,
        PAGE_COUNT,
        TASK,
        QUESTION_ID,
        QUESTION,
        ANSWER,
        FIELDS,
        FINISH_REASON,
        PROMPT_TOKENS,
        ANSWER_TOKENS,
        LATENCY_MS,
        MODEL,
        ERROR_STAGE,
        ERROR,
        CREATED_AT,
    ];
}

/// The Arrow schema of the output: the lake-enrichment key columns first (nullable utf8, named
/// exactly as the keys, so the output joins back onto its source table), then the standard
/// columns. Columns that a failed row cannot fill are nullable; `run_id`, `doc_uri`, `task`,
/// `question`, `model` and `created_at` never are.
pub fn output_schema(key_columns: &[String]) -> Result<SchemaRef, SinkError> {
    use columns::*;
    for (index, name) in key_columns.iter().enumerate() {
        let reason = if name.is_empty() {
            Some("empty name")
        } else if columns::ALL.contains(&name.as_str()) {
            Some("it is also the name of an output column")
        } else if key_columns[..index].contains(name) {
            Some("listed twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(SinkError::KeyColumn {
                name: name.clone(),
                reason: reason.to_owned(),
            });
        }
    }
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let number = |name: &str, nullable| Field::new(name, DataType::UInt32, nullable);
    let mut fields: Vec<Field> = key_columns.iter().map(|key| text(key, true)).collect();
    fields.extend([
        text(RUN_ID, false),
        text(DOC_URI, false),
        text(DOC_VERSION, true),
        number(PAGE, true),
        number(PAGE_COUNT, true),
        text(TASK, false),
        text(QUESTION_ID, true),
        text(QUESTION, false),
        text(ANSWER, true),
        text(FIELDS, true),
        text(FINISH_REASON, true),
        number(PROMPT_TOKENS, true),
        number(ANSWER_TOKENS, true),
        Field::new(LATENCY_MS, DataType::Float32, true),
        text(MODEL, false),
        text(ERROR_STAGE, true),
        text(ERROR, true),
        Field::new(
            CREATED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]);
    Ok(Arc::new(Schema::new(fields)))
}

/// The key columns of an output schema: every column before `run_id`.
pub(crate) fn key_columns_of(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|field| field.name().clone())
        .take_while(|name| name != columns::RUN_ID)
        .collect()
}

/// Rows as one record batch of `schema` (from [`output_schema`]).
pub fn rows_to_batch(schema: &SchemaRef, rows: &[OutputRow]) -> Result<RecordBatch, SinkError> {
    let text = |value: fn(&OutputRow) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::new();
        for row in rows {
            builder.append_option(value(row));
        }
        Arc::new(builder.finish())
    };
    let number = |value: fn(&OutputRow) -> Option<u32>| -> ArrayRef {
        let mut builder = UInt32Builder::with_capacity(rows.len());
        for row in rows {
            builder.append_option(value(row));
        }
        Arc::new(builder.finish())
    };
    let key_columns = key_columns_of(schema);
    let mut arrays: Vec<ArrayRef> = key_columns
        .iter()
        .map(|key| {
            let mut builder = StringBuilder::new();
            for row in rows {
                builder.append_option(row.keys.get(key));
            }
            Arc::new(builder.finish()) as ArrayRef
        })
        .collect();
    let mut latency = Float32Builder::with_capacity(rows.len());
    let mut created_at = TimestampMicrosecondBuilder::with_capacity(rows.len());
    for row in rows {
        latency.append_option(row.latency_ms);
        created_at.append_value(row.created_at);
    }
    arrays.extend([
        text(|r| Some(&r.run_id)),
        text(|r| Some(&r.doc_uri)),
        text(|r| r.doc_version.as_deref()),
        number(|r| r.page),
        number(|r| r.page_count),
        text(|r| Some(&r.task)),
        text(|r| r.question_id.as_deref()),
        text(|r| Some(&r.question)),
        text(|r| r.answer.as_deref()),
        text(|r| r.fields.as_deref()),
        text(|r| r.finish_reason.map(|f| f.as_str())),
        number(|r| r.prompt_tokens),
        number(|r| r.answer_tokens),
        Arc::new(latency.finish()),
        text(|r| Some(&r.model)),
        text(|r| r.error_stage.map(|s| s.as_str())),
        text(|r| r.error.as_deref()),
        Arc::new(created_at.finish().with_timezone("UTC")),
    ]);
    RecordBatch::try_new(Arc::clone(schema), arrays)
        .map_err(|e| SinkError::InvalidRows(e.to_string()))
}

/// Rows back from a batch of the output schema; columns before `run_id` are keys.
pub(crate) fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<OutputRow>, String> {
    use columns::*;
    let column = |name: &str| -> Result<&ArrayRef, String> {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name:?}"))
    };
    let text = |name: &str| -> Result<&StringArray, String> {
        column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("column {name:?} is not utf8"))
    };
    let number = |name: &str| -> Result<&arrow::array::PrimitiveArray<UInt32Type>, String> {
        column(name)?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| format!("column {name:?} is not uint32"))
    };
    let get =
        |array: &StringArray, row: usize| array.is_valid(row).then(|| array.value(row).to_owned());
    let get_number = |array: &arrow::array::PrimitiveArray<UInt32Type>, row: usize| {
        array.is_valid(row).then(|| array.value(row))
    };
    let keys: Vec<(String, &StringArray)> = key_columns_of(&batch.schema())
        .into_iter()
        .map(|key| Ok((key.clone(), text(&key)?)))
        .collect::<Result<_, String>>()?;
    let (run_id, doc_uri, doc_version) = (text(RUN_ID)?, text(DOC_URI)?, text(DOC_VERSION)?);
    let (page, page_count, task) = (number(PAGE)?, number(PAGE_COUNT)?, text(TASK)?);
    let (question_id, question, answer) = (text(QUESTION_ID)?, text(QUESTION)?, text(ANSWER)?);
    let (fields, finish_reason) = (text(FIELDS)?, text(FINISH_REASON)?);
    let (prompt_tokens, answer_tokens) = (number(PROMPT_TOKENS)?, number(ANSWER_TOKENS)?);
    let latency = column(LATENCY_MS)?
        .as_primitive_opt::<Float32Type>()
        .ok_or("column \"latency_ms\" is not float32")?;
    let (model, error_stage, error) = (text(MODEL)?, text(ERROR_STAGE)?, text(ERROR)?);
    let created_at = column(CREATED_AT)?
        .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
        .ok_or("column \"created_at\" is not a timestamp in microseconds")?;
    (0..batch.num_rows())
        .map(|row| {
            let required = |array: &StringArray, name: &str| {
                get(array, row).ok_or_else(|| format!("row {row}: {name} is null"))
            };
            Ok(OutputRow {
                run_id: required(run_id, RUN_ID)?,
                doc_uri: required(doc_uri, DOC_URI)?,
                doc_version: get(doc_version, row),
                page: get_number(page, row),
                page_count: get_number(page_count, row),
                task: required(task, TASK)?,
                question_id: get(question_id, row),
                question: required(question, QUESTION)?,
                answer: get(answer, row),
                fields: get(fields, row),
                finish_reason: match get(finish_reason, row) {
                    None => None,
                    Some(text) => Some(
                        finish_reason_from_str(&text)
                            .ok_or_else(|| format!("row {row}: unknown finish_reason {text:?}"))?,
                    ),
                },
                prompt_tokens: get_number(prompt_tokens, row),
                answer_tokens: get_number(answer_tokens, row),
                latency_ms: latency.is_valid(row).then(|| latency.value(row)),
                model: required(model, MODEL)?,
                error_stage: match get(error_stage, row) {
                    None => None,
                    Some(text) => Some(
                        Stage::from_name(&text)
                            .ok_or_else(|| format!("row {row}: unknown error_stage {text:?}"))?,
                    ),
                },
                error: get(error, row),
                created_at: created_at.value(row),
                keys: keys
                    .iter()
                    .filter_map(|(key, array)| Some((key.clone(), get(array, row)?)))
                    .collect(),
            })
        })
        .collect()
}
