//! `docpipe eval docvqa`: a DocVQA dataset answered through the same pipeline as `docpipe run`.
//!
//! The dataset's pages become a JSONL manifest under `--out/eval/` (one line per page image,
//! with its questions), so the pipeline's source, render, batching, sink and resume apply
//! unchanged: each page is rendered and encoded once for all of its questions, and a rerun skips
//! the pages already committed. Images inlined in Parquet are spilled next to the manifest, once
//! (their object version must not change between runs, or resume would not recognize them).
//! The scoring files are then built from the committed rows.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use docpipe_eval::dataset::{DocVqaDataset, ImageSource, PageGroup};
use docpipe_eval::pipeline::{pipeline_config, predictions_from_rows, EvalSettings};
use docpipe_eval::{evaluate, predictions, report};
use docpipe_pipeline::model::Family;
use docpipe_pipeline::RunOptions;
use docpipe_render::WorkerCommand;
use docpipe_store::object_store::{self, ObjectStoreExt};
use docpipe_store::{Location, StoreOptions, Stores};

use crate::exit::{CommandError, Outcome, ResultExt};

/// Without a terminal, progress is a log line this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct DocvqaArgs {
    /// The dataset: a val_v1.0.json-style file (images next to it), a .parquet file or a
    /// folder/prefix of them (images inlined); a local path or an object-store URL.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub dataset: String,
    /// The checkpoint (Idefics2, Idefics3 or Florence-2): a local folder (hub layout), a hub id
    /// `ORG/NAME[@REVISION]`, or an object-store prefix (`s3://…/`); see docs/models.md.
    /// Florence-2 is asked `<DocVQA>{question}` unless `--set prompt.template=...` says
    /// otherwise.
    #[arg(long, value_name = "MODEL")]
    pub model: String,
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

pub fn run(args: DocvqaArgs) -> Result<Outcome, CommandError> {
    let runtime = crate::commands::io_runtime(tokio::runtime::Builder::new_multi_thread())?;
    runtime.block_on(eval(args))
}

async fn eval(args: DocvqaArgs) -> Result<Outcome, CommandError> {
    let stores = Stores::new(StoreOptions::default());
    // The prompt's default depends on the family, so the checkpoint is resolved (fetched if
    // needed) first and handed to the pipeline, which loads it without resolving it again. A
    // checkpoint that cannot be read is reported when the pipeline loads it.
    let model = args.model.clone();
    let checkpoint = tokio::task::spawn_blocking(move || docpipe_hub::resolve(&model))
        .await
        .context("resolving --model")
        .incomplete()?
        .classified()?;
    let settings = match Family::of_checkpoint(checkpoint.dir()) {
        Ok(family) => EvalSettings::for_family(&args.set, family),
        Err(_) => EvalSettings::from_overrides(&args.set),
    }
    .usage()?;
    let out = stores
        .open(&args.out)
        .with_context(|| format!("--out {}", args.out))
        .usage()?;
    let dataset = DocVqaDataset::open(&stores, &args.dataset)
        .await
        .classified()?;
    let annotations = dataset.annotations(args.limit).await.classified()?;
    let manifest = out.join("eval/pages.jsonl").usage()?;
    write_manifest(&dataset, args.limit, &out, &manifest)
        .await
        .usage()?;
    let config = pipeline_config(
        manifest.url().as_ref(),
        &args.model,
        &settings.prompt,
        &args.out,
        &settings.pipeline,
    )
    .usage()?;
    let worker_command = WorkerCommand::current_exe()
        .context("cannot locate the docpipe executable for the render workers")
        .incomplete()?;
    let summary = docpipe_pipeline::run(RunOptions {
        config,
        worker_command,
        store_options: StoreOptions::default(),
        log_every: LOG_EVERY,
        shard: None,
        checkpoint: Some(checkpoint),
    })
    .await
    .classified()?;
    let rows = docpipe_sink::read_rows(&stores, &summary.sink_uri)
        .await
        .incomplete()?;
    let selected: HashSet<i64> = annotations.iter().map(|a| a.question_id).collect();
    let answered = predictions_from_rows(&rows, &selected, &settings.answer)
        .with_context(|| summary.sink_uri.clone())
        .incomplete()?;
    for question in &answered.unanswered {
        eprintln!(
            "questionId {} ({}): {}",
            question.question_id, question.doc_uri, question.error
        );
    }
    let predictions = answered.predictions;
    let evaluation = evaluate(&annotations, &predictions);
    let question_rows = report::question_rows_parquet(&evaluation.rows)
        .map_err(|e| anyhow!("writing the question rows: {e}"))
        .incomplete()?;
    put(
        &out,
        "predictions.json",
        predictions::submission_json(&predictions).into_bytes(),
    )
    .await
    .incomplete()?;
    put(&out, "questions.parquet", question_rows)
        .await
        .incomplete()?;
    let metrics = &evaluation.metrics;
    println!(
        "{} pages answered, {} skipped (already committed)",
        summary.report.written.documents_committed, summary.report.documents_skipped
    );
    if metrics.summary.questions > 0 {
        put(
            &out,
            "metrics.json",
            report::metrics_json(metrics).into_bytes(),
        )
        .await
        .incomplete()?;
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
    let failed = answered.unanswered.len();
    if failed > 0 {
        eprintln!("{failed} questions have no answer (error rows in parts/)");
    } else if summary.report.written.rows_failed > 0 {
        eprintln!(
            "{} rows of this run carry errors (see parts/); every selected question has an answer",
            summary.report.written.rows_failed
        );
    }
    Ok(Outcome::from_failures(
        (failed as u64).max(summary.report.written.rows_failed),
    ))
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
