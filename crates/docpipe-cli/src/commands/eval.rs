//! `docpipe eval …`: evaluation commands. Each is a variant of [`EvalCommand`] with its own
//! args struct and function, so adding one (`docvqa`) touches only this module.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use docpipe_eval::{dataset::DocVqaDataset, evaluate, predictions, report};
use docpipe_store::{StoreOptions, Stores};

use crate::exit::{CommandError, Outcome, ResultExt};

mod docvqa;

#[derive(Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: EvalCommand,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Score a DocVQA predictions file with ANLS (overall, per question type) and exact match.
    #[command(after_help = crate::exit::HELP)]
    Anls(AnlsArgs),
    /// Answer a DocVQA dataset with a model through the `docpipe run` pipeline, then write
    /// predictions.json, per-question rows and (with gold answers) metrics.json.
    #[command(after_help = crate::exit::HELP)]
    Docvqa(docvqa::DocvqaArgs),
}

#[derive(Args)]
pub struct AnlsArgs {
    /// Gold annotations: a val_v1.0.json-style file, a .parquet file or a folder/prefix of them;
    /// a local path or an object-store URL (s3://, gs://, az://, file://, memory://).
    #[arg(long, value_name = "FILE")]
    pub annotations: String,
    /// Predictions in the submission format [{"questionId": 123, "answer": "..."}]; a local
    /// path or an object-store URL.
    #[arg(long, value_name = "FILE")]
    pub predictions: String,
    /// Print one JSON object {"anls", "questions", "per_type", "accuracy"} instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> Result<Outcome, CommandError> {
    match args.command {
        EvalCommand::Anls(args) => anls(args),
        EvalCommand::Docvqa(args) => docvqa::run(args),
    }
}

/// How many unknown questionIds are named one by one before the rest are only counted.
const UNKNOWN_IDS_LISTED: usize = 20;

fn anls(args: AnlsArgs) -> Result<Outcome, CommandError> {
    let runtime = super::io_runtime(tokio::runtime::Builder::new_current_thread())?;
    let stores = Stores::new(StoreOptions::default());
    let (annotations, predictions) = runtime.block_on(async {
        let dataset = DocVqaDataset::open(&stores, &args.annotations)
            .await
            .classified()?;
        let annotations = dataset.annotations(None).await.classified()?;
        let predictions = predictions::read(&stores, &args.predictions)
            .await
            .classified()?;
        Ok::<_, CommandError>((annotations, predictions))
    })?;
    let evaluation = evaluate(&annotations, &predictions);
    let metrics = &evaluation.metrics;
    if metrics.summary.questions == 0 {
        return Err(anyhow!(
            "{}: none of its {} questions has gold answers (a test split?); nothing to score",
            args.annotations,
            annotations.len()
        ))
        .usage();
    }
    for id in evaluation
        .unknown_question_ids
        .iter()
        .take(UNKNOWN_IDS_LISTED)
    {
        tracing::warn!(
            "{}: questionId {id} is not in the annotations; ignored",
            args.predictions
        );
    }
    if metrics.unknown_predictions > 0 {
        tracing::warn!(
            "{}: {} predictions for unknown questionIds ignored{}",
            args.predictions,
            metrics.unknown_predictions,
            if metrics.unknown_predictions > UNKNOWN_IDS_LISTED {
                " (first ones listed above)"
            } else {
                ""
            }
        );
    }
    if metrics.missing_predictions > 0 {
        tracing::warn!(
            "{} of {} questions have no prediction and score 0",
            metrics.missing_predictions,
            metrics.summary.questions
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&metrics.summary).incomplete()?);
    } else {
        print!("{}", report::table(&evaluation));
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: EvalCommand,
    }

    #[test]
    fn anls_requires_both_files() {
        assert!(Cli::try_parse_from(["eval", "anls", "--annotations", "a.json"]).is_err());
        assert!(Cli::try_parse_from([
            "eval",
            "anls",
            "--annotations",
            "a.json",
            "--predictions",
            "p.json",
            "--json",
        ])
        .is_ok());
    }
}
