//! `docpipe`: a batch document-understanding pipeline.
//!
//! Each subcommand lives in its own module under `commands/`; this file only parses the command
//! line, sets up logging and hands each command's result to [`exit::code`], the one place that
//! turns results into the documented exit codes.

mod allocator;
mod commands;
mod exit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "docpipe", version, about, long_about = None)]
#[command(after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(after_help = exit::HELP)]
    Render(commands::render::RenderArgs),
    /// Internal: a render worker process, driven over stdin/stdout by the render pool.
    #[command(hide = true)]
    RenderWorker(commands::render::WorkerArgs),
    /// Batched generation with an Idefics2, Idefics3 or Florence-2 checkpoint over a JSONL file
    /// of chat requests.
    #[command(after_help = exit::HELP)]
    Generate(commands::generate::GenerateArgs),
    /// DocVQA evaluation: `eval docvqa` runs a checkpoint on a dataset, `eval anls` scores predictions.
    Eval(commands::eval::EvalArgs),
    /// Run a pipeline (pipelines/*.toml): source → render → model → Parquet. Without a file,
    /// the embedded demo pipeline (its tiny fixture model has random weights: answers are noise;
    /// point `--set model.path=` at a real checkpoint: a folder, a hub id such as
    /// `HuggingFaceM4/idefics2-8b`, or a bucket prefix).
    #[command(after_help = exit::HELP)]
    Run(commands::run::RunArgs),
    /// Finish a sharded run: write the dataset manifest once every shard is complete, or list
    /// the missing and failed shards.
    #[command(after_help = exit::HELP)]
    Commit(commands::commit::CommitArgs),
}

fn main() -> ExitCode {
    allocator::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOCPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => commands::render::run(args),
        Command::RenderWorker(args) => commands::render::worker(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Commit(args) => commands::commit::run(args),
    };
    exit::code(result)
}
