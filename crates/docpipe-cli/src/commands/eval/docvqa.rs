//! `docpipe eval docvqa`: a DocVQA dataset answered through the same pipeline as `docpipe run`.
//!
//! The dataset's pages become a JSONL manifest under `--out/eval/` (one line per page image,
//! with its questions), so the pipeline's source, render, batching, sink and resume apply
//! unchanged: each page is rendered and encoded once for all of its questions, and a rerun skips
//! the pages already committed. Images inlined in Parquet are spilled next to the manifest, once
//! (their object version must not change between runs, or resume would not recognize them).
//! The scoring files are then built from the committed rows.

use std::collections::BTreeMap;
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
    /// `--set model.devices='["cpu","cpu"]'` (repeatable; values are TOML, else strings).
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the I/O runtime: {e}");
            return exit::INCOMPLETE;
        }
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
    let prompt = ShortAnswerPrompt::default();
    prompt.validate().map_err(|e| usage(e.into()))?;
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
    let config = pipeline_config(&args, &prompt, &manifest).map_err(usage)?;
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
    let postprocess = AnswerPostprocess::default();
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
        &args.set,
    )?)
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
