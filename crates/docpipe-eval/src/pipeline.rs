//! DocVQA through docpipe's own pipeline: the pipeline `docpipe eval docvqa` runs, how its
//! `--set` overrides split between the pipeline and the evaluation, and the predictions read
//! back from the committed rows.
//!
//! Running the benchmark through the production pipeline (rather than a separate loop) means the
//! score measures what users run: the same rendering, batching, resume and error rows.

use std::collections::HashSet;

use docpipe_pipeline::config::apply_override;
use docpipe_pipeline::model::Family;
use docpipe_pipeline::{ConfigError, PipelineConfig};
use docpipe_sink::OutputRow;

use crate::answer::{AnswerPostprocess, ShortAnswerPrompt, TemplateError};
use crate::predictions::Prediction;

/// The origin named in configuration errors.
const ORIGIN: &str = "docpipe eval docvqa";

/// Answers are short spans: a longer generation is the model rambling.
const MAX_NEW_TOKENS: usize = 32;

/// Why the evaluation settings or the pipeline were rejected. Always names the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A `prompt.*` or `answer.*` override is malformed (see [`apply_override`]).
    #[error(transparent)]
    Override(#[from] ConfigError),
    /// A `prompt.*` or `answer.*` key is unknown or its value has the wrong type.
    #[error("--set {section}.*: {source}")]
    Section {
        /// `prompt` or `answer`.
        section: &'static str,
        /// What TOML deserialization found wrong, naming the key.
        source: toml::de::Error,
    },
    /// `prompt.template` does not hold exactly one `{question}`.
    #[error("--set prompt.template: {0}")]
    Template(#[from] TemplateError),
}

/// `--set` split by section: `prompt.*` and `answer.*` configure the evaluation, the rest the
/// pipeline. Values follow the pipeline's rule ([`apply_override`]): TOML, else a string.
#[derive(Debug)]
pub struct EvalSettings {
    /// The `prompt.*` overrides over [`ShortAnswerPrompt::default`], validated.
    pub prompt: ShortAnswerPrompt,
    /// The `answer.*` overrides over [`AnswerPostprocess::default`].
    pub answer: AnswerPostprocess,
    /// The overrides left for the pipeline, in their order.
    pub pipeline: Vec<String>,
}

impl EvalSettings {
    /// Splits `--set` items by section and builds the evaluation settings from `prompt.*` and
    /// `answer.*`; the pipeline's items are only passed on here.
    pub fn from_overrides(overrides: &[String]) -> Result<Self, SettingsError> {
        Self::with_default_prompt(overrides, ShortAnswerPrompt::default())
    }

    /// As [`EvalSettings::from_overrides`], with `prompt.*` over the default prompt of the
    /// checkpoint's family ([`ShortAnswerPrompt::for_family`]).
    pub fn for_family(overrides: &[String], family: Family) -> Result<Self, SettingsError> {
        Self::with_default_prompt(overrides, ShortAnswerPrompt::for_family(family))
    }

    fn with_default_prompt(
        overrides: &[String],
        default_prompt: ShortAnswerPrompt,
    ) -> Result<Self, SettingsError> {
        let mut evaluation = toml::Table::new();
        let mut pipeline = Vec::new();
        for item in overrides {
            match item.split_once('.').map(|(section, _)| section.trim()) {
                Some("prompt" | "answer") => apply_override(&mut evaluation, item)?,
                _ => pipeline.push(item.clone()),
            }
        }
        let prompt: ShortAnswerPrompt = if evaluation.contains_key("prompt") {
            section(&mut evaluation, "prompt")?
        } else {
            default_prompt
        };
        prompt.validate()?;
        Ok(EvalSettings {
            prompt,
            answer: section(&mut evaluation, "answer")?,
            pipeline,
        })
    }
}

/// Deserializes one section of the evaluation overrides, defaults filling what is not set.
fn section<T: serde::de::DeserializeOwned>(
    table: &mut toml::Table,
    name: &'static str,
) -> Result<T, SettingsError> {
    let value = table
        .remove(name)
        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    value.try_into().map_err(|source| SettingsError::Section {
        section: name,
        source,
    })
}

/// The pipeline of an evaluation: the page manifest as source (one line per page image with its
/// questions), one `qa` task over the manifest's questions, the rows under `out`; then the
/// user's overrides, checked like `docpipe run`'s.
pub fn pipeline_config(
    manifest_url: &str,
    model_path: &str,
    prompt: &ShortAnswerPrompt,
    out: &str,
    overrides: &[String],
) -> Result<PipelineConfig, ConfigError> {
    let pipeline = serde_json::json!({
        "source": {
            "uri": manifest_url,
            "manifest": {"uri_column": "uri", "key_columns": [], "questions_column": "questions"},
        },
        "model": {"path": model_path, "max_new_tokens": MAX_NEW_TOKENS},
        "task": [{
            "kind": "qa",
            "name": "docvqa",
            "prompt": prompt.template,
            "document_questions": true,
        }],
        "sink": {"uri": out},
    });
    let table = toml::Table::try_from(pipeline).expect("a JSON object of tables is a TOML table");
    PipelineConfig::from_table(ORIGIN, table, overrides)
}

/// A question the pipeline could not answer, with the row's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnansweredQuestion {
    /// DocVQA's `questionId`.
    pub question_id: i64,
    /// The page image's document URI, as in the row.
    pub doc_uri: String,
    /// The row's error message (`no answer` if it has none).
    pub error: String,
}

/// What the committed rows say about the selected questions.
#[derive(Debug, Default)]
pub struct RowPredictions {
    /// Cleaned-up answers, sorted by questionId.
    pub predictions: Vec<Prediction>,
    /// Questions whose row failed, in row order.
    pub unanswered: Vec<UnansweredQuestion>,
}

/// A row whose question id is not a DocVQA questionId: the sink holds rows of another run.
#[derive(Debug, thiserror::Error)]
#[error("row of {doc_uri} has question id {question_id:?}, not a DocVQA questionId")]
pub struct ForeignRow {
    /// The row's document.
    pub doc_uri: String,
    /// The row's `question_id` as written.
    pub question_id: String,
}

/// The predictions for `selected` questions from the run's rows. Rows of other questions (an
/// earlier run with a larger `--limit`) are not this evaluation's and are skipped.
pub fn predictions_from_rows(
    rows: &[OutputRow],
    selected: &HashSet<i64>,
    postprocess: &AnswerPostprocess,
) -> Result<RowPredictions, ForeignRow> {
    let mut result = RowPredictions::default();
    for row in rows {
        let Some(id) = &row.question_id else { continue };
        let question_id: i64 = id.parse().map_err(|_| ForeignRow {
            doc_uri: row.doc_uri.clone(),
            question_id: id.clone(),
        })?;
        if !selected.contains(&question_id) {
            continue;
        }
        match &row.answer {
            Some(answer) => result.predictions.push(Prediction {
                question_id,
                answer: postprocess.apply(answer),
            }),
            None => result.unanswered.push(UnansweredQuestion {
                question_id,
                doc_uri: row.doc_uri.clone(),
                error: row.error.clone().unwrap_or_else(|| "no answer".to_owned()),
            }),
        }
    }
    result.predictions.sort_by_key(|p| p.question_id);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use docpipe_core::{DocumentRef, Question};
    use docpipe_pipeline::tasks::TaskPlan;

    use crate::answer::QUESTION_PLACEHOLDER;

    use super::*;

    fn settings(items: &[&str]) -> Result<EvalSettings, SettingsError> {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        EvalSettings::from_overrides(&items)
    }

    #[test]
    fn florence2_is_asked_behind_the_docvqa_prefix_unless_told_otherwise() {
        let florence = EvalSettings::for_family(&[], Family::Florence2).unwrap();
        assert_eq!(florence.prompt.template, "<DocVQA>{question}");
        let idefics = EvalSettings::for_family(&[], Family::Idefics3).unwrap();
        assert_eq!(idefics.prompt, ShortAnswerPrompt::default());
        let told = ["prompt.template=Q: {question}".to_string()];
        let florence = EvalSettings::for_family(&told, Family::Florence2).unwrap();
        assert_eq!(florence.prompt.template, "Q: {question}");
    }

    #[test]
    fn prompt_and_answer_keys_are_taken_out_of_the_pipeline_overrides() {
        let s = settings(&[
            "model.dtype=bf16",
            "prompt.template={question} Answer briefly.",
            "answer.strip_trailing_period=false",
            "model.devices=[\"cpu\",\"cpu\"]",
        ])
        .unwrap();
        assert_eq!(s.prompt.template, "{question} Answer briefly.");
        assert!(!s.answer.strip_trailing_period);
        assert!(s.answer.trim && s.answer.strip_end_of_utterance);
        assert_eq!(
            s.pipeline,
            ["model.dtype=bf16", "model.devices=[\"cpu\",\"cpu\"]"]
        );
    }

    #[test]
    fn defaults_are_the_idefics2_short_answer_settings() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.prompt, ShortAnswerPrompt::default());
        assert_eq!(s.answer, AnswerPostprocess::default());
    }

    #[test]
    fn bad_evaluation_keys_are_named() {
        let unknown = settings(&["answer.lowercase=true"])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("lowercase"), "{unknown}");
        let not_bool = settings(&["answer.trim=yes"]).unwrap_err().to_string();
        assert!(not_bool.contains("answer"), "{not_bool}");
        let template = settings(&["prompt.template=no placeholder"])
            .unwrap_err()
            .to_string();
        assert!(template.contains("prompt.template"), "{template}");
        assert!(matches!(
            settings(&["answer.trim"]),
            Err(SettingsError::Override(ConfigError::OverrideSyntax(_)))
        ));
    }

    #[test]
    fn values_follow_the_pipeline_rule_quoted_or_not() {
        let quoted = settings(&["prompt.template=\"Q: {question}\""]).unwrap();
        let bare = settings(&["prompt.template=Q: {question}"]).unwrap();
        assert_eq!(quoted.prompt.template, "Q: {question}");
        assert_eq!(bare.prompt.template, "Q: {question}");
    }

    /// The shipped DocVQA pipeline leaves the prompt to the checkpoint's family, so that with
    /// every family it asks what `docpipe eval docvqa` asks.
    #[test]
    fn the_shipped_docvqa_pipeline_asks_what_eval_docvqa_asks() {
        let shipped = PipelineConfig::load(
            "docvqa-eval.toml",
            include_str!("../../../pipelines/docvqa-eval.toml"),
            &[],
        )
        .unwrap();
        let mut doc = DocumentRef::new("d.pdf");
        doc.questions.push(Question {
            id: "q".into(),
            text: "What is the date?".into(),
        });
        for &family in Family::ALL {
            let plan = TaskPlan::new(shipped.tasks.clone(), 8, family.default_prompts());
            let ours = ShortAnswerPrompt::for_family(family)
                .template
                .replace(QUESTION_PLACEHOLDER, "What is the date?");
            let queries = plan.queries(&doc);
            assert_eq!(queries.len(), 1);
            assert_eq!(queries[0].prompt, ours, "{family:?}");
        }
    }

    #[test]
    fn the_pipeline_takes_the_manifest_model_prompt_and_overrides() {
        let prompt = ShortAnswerPrompt::default();
        let config = pipeline_config(
            "file:///data/eval/pages.jsonl",
            "/models/idefics2-8b",
            &prompt,
            "out/eval",
            &["model.dtype=bf16".to_owned()],
        )
        .unwrap();
        assert_eq!(config.source.uri, "file:///data/eval/pages.jsonl");
        assert_eq!(config.model.path, "/models/idefics2-8b");
        assert_eq!(config.model.max_new_tokens, MAX_NEW_TOKENS);
        assert_eq!(config.model.dtype, docpipe_core::Dtype::Bf16);
        assert_eq!(config.sink.uri, "out/eval");
        assert_eq!(config.tasks.len(), 1);
        assert_eq!(config.tasks[0].name(), "docvqa");
        let error = pipeline_config(
            "pages.jsonl",
            "m",
            &prompt,
            "out",
            &["model.colour=blue".to_owned()],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("colour"), "{error}");
    }

    fn row(question_id: Option<&str>, answer: Option<&str>, error: Option<&str>) -> OutputRow {
        let mut row =
            OutputRow::for_document(&docpipe_core::DocumentRef::new("p.png"), "run", "m", 0);
        row.question_id = question_id.map(str::to_owned);
        row.answer = answer.map(str::to_owned);
        row.error = error.map(str::to_owned);
        row
    }

    #[test]
    fn rows_become_cleaned_predictions_and_named_failures() {
        let rows = [
            row(Some("7"), Some(" Paris.<end_of_utterance>"), None),
            row(Some("3"), Some("42"), None),
            row(Some("9"), None, Some("infer: out of memory")),
            row(Some("100"), Some("not selected"), None),
            row(None, Some("an OCR row"), None),
        ];
        let selected = HashSet::from([3, 7, 9]);
        let result =
            predictions_from_rows(&rows, &selected, &AnswerPostprocess::default()).unwrap();
        let answers: Vec<(i64, &str)> = result
            .predictions
            .iter()
            .map(|p| (p.question_id, p.answer.as_str()))
            .collect();
        assert_eq!(answers, [(3, "42"), (7, "Paris")]);
        assert_eq!(result.unanswered.len(), 1);
        assert_eq!(result.unanswered[0].question_id, 9);
        assert_eq!(result.unanswered[0].error, "infer: out of memory");
        let foreign = [row(Some("q-1"), Some("x"), None)];
        assert!(predictions_from_rows(&foreign, &selected, &AnswerPostprocess::default()).is_err());
    }
}
