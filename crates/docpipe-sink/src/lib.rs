//! The end of the pipeline: output rows → Parquet parts on an object store.
//!
//! Layout under the sink location (a local folder or a bucket prefix):
//!
//! ```text
//! parts/<shard>-<unix-ms>-<random>.parquet   committed documents, written as they finish
//! manifest[-shard-I-of-N].json               the run manifest, written last, create-only
//! report[-shard-I-of-N].json                 the run report (counts, errors, timings)
//! _claims/                                   claim logs and heartbeats of exclusive runs
//! ```
//!
//! A sharded run's `manifest.json` is the dataset manifest, written by [`commit_dataset`]
//! (`docpipe commit`) once every shard's manifest is there.
//!
//! `<shard>` is `all` or `shard-I-of-N`, `<unix-ms>` is the flush time, zero-padded to 13
//! digits so names sort by time, and `<random>` is 16 hex digits from a per-part random draw:
//! reruns, retries and shards never pick the same name.
//!
//! The unit of commitment is a document. [`Sink::commit_document`] takes all of a finished
//! document's rows; finished documents are buffered and written together as one part, and a
//! document's rows never span two parts. A part is uploaded in one create-only request, so it is
//! either complete or absent: a crash loses only the buffered documents, which a rerun redoes
//! after [`Sink::committed`] has listed what is already there. Runs that overlap on one sink
//! claim documents first ([`Sink::start_claims`], [`Claims`]) and commit each once.

#![warn(missing_docs)]

mod claims;
mod create_only;
mod dataset;
mod error;
mod read;
mod report;
mod resume;
mod row;
mod schema;
mod writer;

pub use claims::{Claim, Claims, DocumentState};
pub use dataset::{commit_dataset, DatasetCommit, DatasetManifest, ShardEntry, ShardProblem};
pub use error::SinkError;
pub use read::{read_batches, read_rows};
pub use report::{RunManifest, RunReport, WrittenRows};
pub use resume::{Committed, DocumentKey, PartInfo};
pub use row::{unix_micros, OutputRow};
pub use schema::{columns, output_schema, rows_to_batch};
pub use writer::{LostDocument, Sink, SinkOptions};
