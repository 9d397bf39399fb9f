//! Writers for evaluation results: `metrics.json`, the readable table, and the per-question
//! rows as Arrow record batches (and Parquet bytes) for the run's output folder.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::evaluate::{Evaluation, Metrics, ScoredQuestion};

/// `metrics.json`: the `--json` summary plus the counts of missing, unknown and duplicate
/// predictions and of questions without answers.
pub fn metrics_json(metrics: &Metrics) -> String {
    serde_json::to_string_pretty(metrics).expect("metrics serialize to JSON")
}

/// The readable report of `docpipe eval anls`.
pub fn table(evaluation: &Evaluation) -> String {
    let m = &evaluation.metrics;
    let s = &m.summary;
    let mut out = String::new();
    let width = evaluation
        .type_counts
        .keys()
        .map(|k| k.chars().count())
        .chain([13])
        .max()
        .unwrap_or(13);
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>8}",
        "question type", "questions", "ANLS"
    );
    for (kind, score) in &s.per_type {
        let count = evaluation.type_counts.get(kind).copied().unwrap_or(0);
        let _ = writeln!(out, "{kind:<width$}  {count:>9}  {score:>8.4}");
    }
    let _ = writeln!(
        out,
        "{:<width$}  {:>9}  {:>8.4}",
        "all", s.questions, s.anls
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "exact-match accuracy: {:.4}", s.accuracy);
    let _ = writeln!(
        out,
        "missing predictions (scored 0): {}",
        m.missing_predictions
    );
    let _ = writeln!(
        out,
        "predictions for unknown questionIds (ignored): {}",
        m.unknown_predictions
    );
    if m.duplicate_predictions > 0 {
        let _ = writeln!(
            out,
            "duplicate predictions (first one scored): {}",
            m.duplicate_predictions
        );
    }
    if m.questions_without_answers > 0 {
        let _ = writeln!(
            out,
            "questions without gold answers (not scored): {}",
            m.questions_without_answers
        );
    }
    out
}

/// The schema of the per-question rows.
pub fn question_rows_schema() -> SchemaRef {
    let list = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    Arc::new(Schema::new(vec![
        Field::new("question_id", DataType::Int64, false),
        Field::new("question", DataType::Utf8, false),
        Field::new("prediction", DataType::Utf8, true),
        Field::new("answers", list.clone(), true),
        Field::new("question_types", list, false),
        Field::new("score", DataType::Float64, true),
        Field::new("exact_match", DataType::Boolean, true),
    ]))
}

/// The rows as one record batch in [`question_rows_schema`].
pub fn question_rows(rows: &[ScoredQuestion]) -> RecordBatch {
    let mut answers = ListBuilder::new(StringBuilder::new());
    let mut types = ListBuilder::new(StringBuilder::new());
    for row in rows {
        answers.append_option(
            row.answers
                .as_ref()
                .map(|a| a.iter().map(|s| Some(s.as_str()))),
        );
        types.append_value(row.question_types.iter().map(|s| Some(s.as_str())));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.question_id),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.question),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.prediction.as_deref()),
        )),
        Arc::new(answers.finish()),
        Arc::new(types.finish()),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.score))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.exact_match))),
    ];
    RecordBatch::try_new(question_rows_schema(), columns)
        .expect("columns are built to match the schema")
}

/// The rows as a zstd-compressed Parquet file.
pub fn question_rows_parquet(
    rows: &[ScoredQuestion],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, question_rows_schema(), Some(props))?;
    writer.write(&question_rows(rows))?;
    writer.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Annotation;
    use crate::evaluate::evaluate;
    use crate::predictions::Prediction;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Float64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn sample() -> Evaluation {
        let annotations = vec![
            Annotation {
                question_id: 7,
                question: "What total?".into(),
                answers: Some(vec!["$12".into(), "12".into()]),
                question_types: vec!["table/list".into()],
                doc_id: 1,
            },
            Annotation {
                question_id: 8,
                question: "Who?".into(),
                answers: None,
                question_types: vec![],
                doc_id: 1,
            },
        ];
        evaluate(
            &annotations,
            &[Prediction {
                question_id: 7,
                answer: "12".into(),
            }],
        )
    }

    #[test]
    fn metrics_json_has_the_summary_keys_and_the_counts() {
        let json: serde_json::Value =
            serde_json::from_str(&metrics_json(&sample().metrics)).unwrap();
        for key in [
            "anls",
            "questions",
            "per_type",
            "accuracy",
            "missing_predictions",
            "unknown_predictions",
            "questions_without_answers",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
        assert_eq!(json["per_type"]["table/list"], 1.0);
        assert_eq!(json["questions_without_answers"], 1);
    }

    #[test]
    fn question_rows_round_trip_through_parquet() {
        let eval = sample();
        let bytes = question_rows_parquet(&eval.rows).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let batch = &batches[0];
        let score = batch
            .column_by_name("score")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(score.value(0), 1.0);
        assert!(score.is_null(1));
        let answers = batch.column_by_name("answers").unwrap().as_list::<i32>();
        assert_eq!(answers.value(0).as_string::<i32>().value(1), "12");
        assert!(answers.is_null(1));
    }

    #[test]
    fn table_lists_types_and_counts() {
        let text = table(&sample());
        assert!(text.contains("table/list"), "{text}");
        assert!(
            text.contains("questions without gold answers (not scored): 1"),
            "{text}"
        );
    }
}
