//! `docpipe run`: a whole pipeline (source → render → prepare → batch → infer → sink) from a
//! pipeline file, or the embedded demo pipeline when no file is given.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use docpipe_core::Shard;
use docpipe_pipeline::config::DEMO_PIPELINE;
use docpipe_pipeline::{PipelineConfig, RunOptions};
use docpipe_render::WorkerCommand;
use docpipe_store::StoreOptions;

use anyhow::{anyhow, Context};

use crate::exit::{CommandError, Outcome, ResultExt};

/// Without a terminal, progress is a log line this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Run a pipeline file (pipelines/*.toml); without one, the demo pipeline built into the binary.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file. Default: the embedded pipelines/demo.toml (fixtures, tiny model, CPU).
    #[arg(value_name = "PIPELINE.toml")]
    pipeline: Option<PathBuf>,
    /// Override a key of the pipeline file, e.g. `--set sink.uri=out/x` or
    /// `--set model.devices='["cpu","cpu"]'` (repeatable; values are TOML, else strings).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Process only shard I of N: the documents whose doc_uri hashes (FNV-1a 64) to I mod N.
    /// Default: the scheduler's array index when one is set (JOB_COMPLETION_INDEX,
    /// SLURM_ARRAY_TASK_ID, AWS_BATCH_JOB_ARRAY_INDEX), else the whole source. See docs/scale.md.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// The shard count N when the index comes from the scheduler (wins over DOCPIPE_SHARDS,
    /// SLURM_ARRAY_TASK_COUNT, AWS_BATCH_JOB_ARRAY_SIZE).
    #[arg(long, value_name = "N")]
    shards: Option<u32>,
}

/// The shard this process runs: `--shard`, else the scheduler's variables, else none.
fn shard(args: &RunArgs) -> anyhow::Result<Option<Shard>> {
    match (args.shard, args.shards) {
        (Some(shard), Some(count)) if shard.count() != count => Err(anyhow!(
            "--shard {shard} and --shards {count} disagree on the shard count"
        )),
        (Some(shard), _) => Ok(Some(shard)),
        (None, count) => match Shard::from_scheduler_env(|key| std::env::var(key).ok(), count)? {
            None if count.is_some() => Err(anyhow!(
                "--shards needs a shard index: --shard I/N, or JOB_COMPLETION_INDEX, \
                 SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX from the scheduler"
            )),
            shard => Ok(shard),
        },
    }
}

pub fn run(args: RunArgs) -> Result<Outcome, CommandError> {
    let (origin, text) = match &args.pipeline {
        None => ("embedded demo.toml".to_owned(), DEMO_PIPELINE.to_owned()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))
                .usage()?;
            (path.display().to_string(), text)
        }
    };
    let config = PipelineConfig::load(&origin, &text, &args.set).usage()?;
    let shard = shard(&args).usage()?;
    let worker_command = WorkerCommand::current_exe()
        .context("cannot locate the docpipe executable for the render workers")
        .incomplete()?;
    let runtime = super::io_runtime(tokio::runtime::Builder::new_multi_thread())?;
    let options = RunOptions {
        config,
        worker_command,
        store_options: StoreOptions::default(),
        log_every: LOG_EVERY,
        shard,
        checkpoint: None,
    };
    let summary = runtime
        .block_on(docpipe_pipeline::run(options))
        .classified()?;
    let report = &summary.report;
    let written = &report.written;
    println!(
        "{} documents processed, {} skipped (already committed), {} rows, {} with errors → {}",
        written.documents_committed,
        report.documents_skipped,
        written.rows,
        written.rows_failed,
        summary.sink_uri
    );
    if report.documents_by_other_runs + report.documents_taken_over + report.documents_lost > 0 {
        println!(
            "overlapping runs: {} documents committed by other runs, {} taken over from stopped \
             runs, {} lost to other runs while this one was stalled",
            report.documents_by_other_runs, report.documents_taken_over, report.documents_lost
        );
    }
    if written.rows_failed > 0 {
        let stages: Vec<String> = written
            .errors_by_stage
            .iter()
            .map(|(stage, n)| format!("{stage}: {n}"))
            .collect();
        eprintln!(
            "{} rows carry errors ({})",
            written.rows_failed,
            stages.join(", ")
        );
    }
    Ok(Outcome::from_failures(written.rows_failed))
}
