//! `docpipe eval docvqa`: a DocVQA dataset answered through the same pipeline as `docpipe run`.
//!
//! The dataset's pages become a JSONL manifest under `--out/eval/` (one line per page image,
//! with its questions), so the pipeline's source, render, batching, sink and resume apply
//! unchanged: each page is rendered and encoded once for all of its questions, and a rerun skips
//! the pages already committed. Images inlined in Parquet are spilled next to the manifest, once
//! (their object version must not change between runs, or resume would not recognize them).
//! The scoring files are then built from the committed rows.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use docpipe_eval::answer::{AnswerPostprocess, ShortAnswerPrompt};
use docpipe_eval::dataset::{DocVqaDataset, ImageSource, PageGroup};
use docpipe_eval::{evaluate, predictions, report, Prediction};
use docpipe_pipeline::{PipelineConfig, RunOptions};
use docpipe_render::WorkerCommand;
use docpipe_store::object_store::{self, ObjectStoreExt};
use docpipe_store::{Location, StoreOptions, Stores};

use crate::exit;

/// Without a terminal, progress is a log line this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct DocvqaArgs {
    /// The dataset: a val_v1.0.json-style file (images next to it), a .parquet file or a
    /// folder/prefix of them (images inlined); a local path or an object-store URL.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub dataset: String,
    /// The Idefics2 checkpoint directory (hub layout).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Only the first N questions of the dataset.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Override a pipeline key, e.g. `--set model.dtype=bf16` or
    /// `--set model.devices='["cpu","cpu"]'` (values are TOML, else strings); or the prompt and
    /// answer clean-up: `--set prompt.template='{question} Answer briefly.'`,
    /// `--set answer.strip_trailing_period=false` (also `answer.trim`,
    /// `answer.strip_end_of_utterance`). Repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Output folder or prefix: parts/ (the pipeline's rows), predictions.json,
    /// questions.parquet, metrics.json and eval/ (the page manifest).
    #[arg(long, value_name = "DIR_OR_URL")]
    pub out: String,
}

/// Where a step failed: before the run (bad input, exit 2) or during it (exit 3).
enum Failure {
    Usage(anyhow::Error),
    Incomplete(anyhow::Error),
}

pub fn run(args: DocvqaArgs) -> u8 {
    let runtime = match crate::commands::io_runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(eval(args)) {
        Ok(code) => code,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            exit::USAGE
        }
        Err(Failure::Incomplete(e)) => {
            eprintln!("error: {e:#}");
            eprintln!("the evaluation did not finish; rerun the same command to resume");
            exit::INCOMPLETE
        }
    }
}

async fn eval(args: DocvqaArgs) -> Result<u8, Failure> {
    let stores = Stores::new(StoreOptions::default());
    let usage = Failure::Usage;
    let incomplete = Failure::Incomplete;
    let settings = EvalSettings::from_overrides(&args.set).map_err(usage)?;
    let prompt = &settings.prompt;
    let out = stores
        .open(&args.out)
        .map_err(|e| usage(anyhow!("--out {}: {e}", args.out)))?;
    let dataset = DocVqaDataset::open(&stores, &args.dataset)
        .await
        .map_err(|e| usage(e.into()))?;
    let annotations = dataset
        .annotations(args.limit)
        .await
        .map_err(|e| usage(e.into()))?;
    let manifest = out.join("eval/pages.jsonl").map_err(|e| usage(e.into()))?;
    write_manifest(&dataset, args.limit, &out, &manifest)
        .await
        .map_err(usage)?;
    let config = pipeline_config(&args, prompt, &manifest, &settings.pipeline).map_err(usage)?;
    let worker_command = WorkerCommand::current_exe().map_err(|e| {
        incomplete(anyhow!(
            "cannot locate the docpipe executable for the render workers: {e}"
        ))
    })?;
    let summary = docpipe_pipeline::run(RunOptions {
        config,
        worker_command,
        store_options: StoreOptions::default(),
        log_every: LOG_EVERY,
        shard: None,
    })
    .await
    .map_err(|e| {
        if e.is_usage() {
            usage(e.into())
        } else {
            incomplete(e.into())
        }
    })?;
    let rows = docpipe_sink::read_rows(&stores, &summary.sink_uri)
        .await
        .map_err(|e| incomplete(e.into()))?;
    let postprocess = &settings.answer;
    // Rows of questions outside this selection (an earlier run with a larger --limit) are not
    // this evaluation's predictions.
    let selected: HashSet<i64> = annotations.iter().map(|a| a.question_id).collect();
    let mut predictions: Vec<Prediction> = Vec::new();
    let mut failed = 0usize;
    for row in &rows {
        let Some(id) = &row.question_id else { continue };
        let question_id: i64 = id.parse().map_err(|_| {
            incomplete(anyhow!(
                "{}: row of {} has question id {id:?}, not a DocVQA questionId",
                summary.sink_uri,
                row.doc_uri
            ))
        })?;
        if !selected.contains(&question_id) {
            continue;
        }
        match &row.answer {
            Some(answer) => predictions.push(Prediction {
                question_id,
                answer: postprocess.apply(answer),
            }),
            None => {
                failed += 1;
                eprintln!(
                    "questionId {question_id} ({}): {}",
                    row.doc_uri,
                    row.error.as_deref().unwrap_or("no answer")
                );
            }
        }
    }
    predictions.sort_by_key(|p| p.question_id);
    let evaluation = evaluate(&annotations, &predictions);
    let question_rows = report::question_rows_parquet(&evaluation.rows)
        .map_err(|e| incomplete(anyhow!("writing the question rows: {e}")))?;
    put(
        &out,
        "predictions.json",
        predictions::submission_json(&predictions).into_bytes(),
    )
    .await
    .map_err(incomplete)?;
    put(&out, "questions.parquet", question_rows)
        .await
        .map_err(incomplete)?;
    let metrics = &evaluation.metrics;
    println!(
        "{} pages answered, {} skipped (already committed)",
        summary.report.documents_committed, summary.report.documents_skipped
    );
    if metrics.summary.questions > 0 {
        put(
            &out,
            "metrics.json",
            report::metrics_json(metrics).into_bytes(),
        )
        .await
        .map_err(incomplete)?;
        println!(
            "{} questions, ANLS {:.4}, accuracy {:.4} → {}",
            metrics.summary.questions, metrics.summary.anls, metrics.summary.accuracy, args.out
        );
    } else {
        println!(
            "{} questions answered, no gold answers to score → {}",
            predictions.len(),
            args.out
        );
    }
    Ok(if failed > 0 || summary.report.rows_failed > 0 {
        eprintln!("{failed} questions have no answer (error rows in parts/)");
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}

/// The pipeline: the embedded DocVQA defaults with this dataset's manifest, the model and the
/// output, then the user's `--set` overrides (checked like `docpipe run`'s).
fn pipeline_config(
    args: &DocvqaArgs,
    prompt: &ShortAnswerPrompt,
    manifest: &Location,
    overrides: &[String],
) -> anyhow::Result<PipelineConfig> {
    // JSON strings are valid TOML basic strings.
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let text = format!(
        "[source]\n\
         uri = {source}\n\
         manifest = {{ uri_column = \"uri\", key_columns = [], questions_column = \"questions\" }}\n\
         [model]\n\
         path = {model}\n\
         max_new_tokens = 32\n\
         [[task]]\n\
         kind = \"qa\"\n\
         name = \"docvqa\"\n\
         prompt = {prompt}\n\
         document_questions = true\n\
         [sink]\n\
         uri = {sink}\n",
        source = quote(manifest.url().as_ref()),
        model = quote(&args.model.display().to_string()),
        prompt = quote(&prompt.template),
        sink = quote(&args.out),
    );
    Ok(PipelineConfig::load(
        "docpipe eval docvqa",
        &text,
        overrides,
    )?)
}

/// `--set` split by section: `prompt.*` and `answer.*` configure the evaluation, the rest the
/// pipeline.
#[derive(Debug)]
struct EvalSettings {
    prompt: ShortAnswerPrompt,
    answer: AnswerPostprocess,
    pipeline: Vec<String>,
}

impl EvalSettings {
    fn from_overrides(overrides: &[String]) -> anyhow::Result<Self> {
        let mut prompt = serde_json::Map::new();
        let mut answer = serde_json::Map::new();
        let mut pipeline = Vec::new();
        for item in overrides {
            let section = match item.split_once('.') {
                Some(("prompt", _)) => &mut prompt,
                Some(("answer", _)) => &mut answer,
                _ => {
                    pipeline.push(item.clone());
                    continue;
                }
            };
            let (key, raw) = item
                .split_once('=')
                .and_then(|(path, raw)| Some((path.trim().split_once('.')?.1, raw.trim())))
                .ok_or_else(|| anyhow!("--set {item:?}: expected section.key=value"))?;
            let value = serde_json::from_str(raw)
                .unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()));
            section.insert(key.to_owned(), value);
        }
        let prompt: ShortAnswerPrompt =
            serde_json::from_value(prompt.into()).map_err(|e| anyhow!("--set prompt.*: {e}"))?;
        prompt
            .validate()
            .map_err(|e| anyhow!("--set prompt.template: {e}"))?;
        let answer =
            serde_json::from_value(answer.into()).map_err(|e| anyhow!("--set answer.*: {e}"))?;
        Ok(EvalSettings {
            prompt,
            answer,
            pipeline,
        })
    }
}

/// One manifest line per page image: its URL (inline images spilled under `eval/images/`) and
/// its questions with the questionId as question id.
async fn write_manifest(
    dataset: &DocVqaDataset,
    limit: Option<usize>,
    out: &Location,
    manifest: &Location,
) -> anyhow::Result<()> {
    let mut pages = dataset.pages(limit).await?;
    let mut lines = String::new();
    while let Some(page) = pages.next().await {
        let page = page?;
        let uri = page_uri(&page, out).await?;
        let questions: Vec<BTreeMap<&str, String>> = page
            .questions
            .iter()
            .map(|q| {
                BTreeMap::from([
                    ("id", q.question_id.to_string()),
                    ("text", q.question.clone()),
                ])
            })
            .collect();
        lines.push_str(&serde_json::to_string(&serde_json::json!({
            "uri": uri,
            "questions": questions,
        }))?);
        lines.push('\n');
    }
    put(out, "eval/pages.jsonl", lines.into_bytes())
        .await
        .with_context(|| format!("writing the page manifest {}", manifest.display()))
}

/// The URL the pipeline reads a page from. An inline image is written once, named by its first
/// questionId (unique per page), keeping its file extension so the renderer recognizes it.
async fn page_uri(page: &PageGroup, out: &Location) -> anyhow::Result<String> {
    match &page.image {
        ImageSource::Stored(location) => Ok(location.url().to_string()),
        ImageSource::Inline { bytes, path } => {
            let first = page
                .questions
                .first()
                .ok_or_else(|| anyhow!("{}: a page without questions", page.image.describe()))?;
            let extension = path
                .as_deref()
                .and_then(|p| p.rsplit_once('.'))
                .map_or("png", |(_, ext)| ext)
                .to_ascii_lowercase();
            let name = format!("eval/images/{}.{extension}", first.question_id);
            let location = out.join(&name)?;
            match location.store().head(location.prefix()).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    put(out, &name, bytes.to_vec()).await?;
                }
                Err(e) => return Err(location.error(e).into()),
            }
            Ok(location.url().to_string())
        }
    }
}

/// Writes one object under `out`.
async fn put(out: &Location, relative: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let location = out.join(relative)?;
    location
        .store()
        .put(location.prefix(), bytes.into())
        .await
        .map_err(|e| location.error(e))
        .with_context(|| format!("writing {}", location.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(items: &[&str]) -> anyhow::Result<EvalSettings> {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        EvalSettings::from_overrides(&items)
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
        assert!(settings(&["answer.trim"]).is_err());
    }
}
