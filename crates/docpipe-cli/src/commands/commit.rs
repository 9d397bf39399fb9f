//! `docpipe commit`: the last step of a sharded run. Shards run independently under a
//! scheduler; this checks from the sink alone that every one of them finished and writes the
//! dataset manifest (`manifest.json`, create-only) that readers use.

use clap::Args;
use docpipe_sink::{commit_dataset, DatasetCommit, SinkError};
use docpipe_store::{StoreOptions, Stores};

use crate::exit::{CommandError, Outcome, ResultExt};

/// Write the dataset manifest of a sharded run once every shard is complete; otherwise list
/// the missing or failed shards (exit 1).
#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The run's sink location (`sink.uri`, `{date}` expanded), e.g. `s3://bucket/runs/x/`.
    #[arg(value_name = "RUN_URL")]
    run_url: String,
    /// The number of shards. Default: the count recorded in the shard manifests (required when
    /// no shard has finished yet).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    shards: Option<u32>,
}

pub fn run(args: CommitArgs) -> Result<Outcome, CommandError> {
    let runtime = super::io_runtime(tokio::runtime::Builder::new_current_thread())?;
    let stores = Stores::new(StoreOptions::default());
    let result = runtime.block_on(commit_dataset(&stores, &args.run_url, args.shards));
    match result {
        Ok(DatasetCommit::Written { url, manifest }) => {
            println!(
                "committed {} shards: {} documents, {} rows → {url}",
                manifest.shards, manifest.documents, manifest.rows
            );
            Ok(Outcome::Success)
        }
        Ok(DatasetCommit::AlreadyCommitted { url }) => {
            println!("{url} already exists: the dataset was committed before; nothing written");
            Ok(Outcome::Success)
        }
        Ok(DatasetCommit::Incomplete { problems }) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "{} shard(s) not complete: nothing committed. Rerun them (a rerun resumes), \
                 then run docpipe commit again",
                problems.len()
            );
            Ok(Outcome::SomeFailed)
        }
        // Opening a store only parses the URL and the environment: no request is made, so a
        // failure there is the caller's to fix.
        Err(e @ (SinkError::Store(_) | SinkError::ShardCount { .. })) => Err(e).usage(),
        Err(e) => Err(e).incomplete(),
    }
}
