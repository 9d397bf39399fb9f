//! DocVQA evaluation for docpipe: ANLS scoring, dataset readers for the official JSON layout and
//! the hub Parquet layout, prediction files, and the writers for `metrics.json`, the submission
//! file and the per-question rows.
//!
//! `docpipe eval anls` scores any predictions file with [`evaluate::evaluate`]; the pipeline's
//! `docpipe eval docvqa` reads pages with [`dataset::DocVqaDataset::pages`], builds prompts with
//! [`answer::ShortAnswerPrompt`], cleans answers with [`answer::AnswerPostprocess`] and writes its
//! results with [`report`] and [`predictions::submission_json`]; [`pipeline`] holds the pipeline it
//! runs and turns the committed rows back into predictions.

#![warn(missing_docs)]

pub mod anls;
pub mod answer;
pub mod dataset;
pub mod evaluate;
mod ids;
pub mod pipeline;
pub mod predictions;
pub mod report;

pub use dataset::{
    Annotation, DatasetError, DocVqaDataset, DocVqaQuestion, ImageSource, PageGroup, PageReader,
};
pub use evaluate::{evaluate, AnlsSummary, Evaluation, Metrics, ScoredQuestion};
pub use predictions::{Prediction, PredictionsError};
