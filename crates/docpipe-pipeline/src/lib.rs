//! Joins docpipe's stages into one run: source → render → prepare → batch → infer → sink.
//!
//! Stages talk through bounded channels, so a slow model slows the renderer instead of filling
//! memory. CPU work runs on rayon and in the render worker processes, I/O on tokio, and model
//! replicas each on their own thread.

#![warn(missing_docs)]

mod claimer;
pub mod config;
pub mod engine;
pub mod model;
pub mod pool;
pub mod progress;
mod queue;
mod renderer;
mod rows;
mod run;
pub mod tasks;
#[cfg(test)]
mod test_model;
#[cfg(test)]
mod test_pipeline;

pub use config::{ConfigError, PipelineConfig};
pub use pool::{
    Batching, Completed, InferError, InferencePool, Job, PoolError, Replica, ReplicaFailure,
    ReplicaStats, Submitter,
};
pub use queue::{BatchBudget, QueueClosed};
pub use run::{run, RunError, RunOptions, RunSummary};
