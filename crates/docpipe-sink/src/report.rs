//! The two JSON files next to the parts: [`RunManifest`] (`manifest.json`, written last and
//! create-only; its presence means the run completed) and [`RunReport`] (`report.json`:
//! counts, errors by stage, timings). Fields are documented in docs/schema.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{OutputRow, PartInfo};

/// The run manifest, written last and create-only: its presence means the run (or shard)
/// completed and lists exactly the parts that make up its output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// The run that wrote the manifest; earlier, interrupted runs may have written some of its
    /// parts.
    pub run_id: String,
    /// The `model` column value: checkpoint name plus a short hash.
    pub model: String,
    /// `I/N` when the run was sharded (filled by the sink).
    pub shard: Option<String>,
    /// Key columns of the output (filled by the sink).
    pub key_columns: Vec<String>,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    /// Unix time in milliseconds (filled by the sink).
    pub finished_at_ms: u64,
    /// Seconds spent per stage (`render`, `infer`, ...), as the pipeline measured them.
    pub seconds_by_stage: BTreeMap<String, f64>,
    /// Every committed part of this run or shard (filled by the sink).
    pub parts: Vec<PartInfo>,
    /// Rows over `parts` (filled by the sink).
    pub rows: u64,
    /// Documents over `parts` (filled by the sink).
    pub documents: u64,
}

/// The run report written next to the data (`report.json`): what happened, for people and
/// dashboards. The pipeline fills it; the sink counts what it wrote ([`WrittenRows`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The run this report describes: the last one that finished, not every run of the dataset.
    pub run_id: String,
    /// The `model` column value, as in the manifest.
    pub model: String,
    /// `I/N` when the run was sharded, `None` otherwise.
    pub shard: Option<String>,
    /// Documents listed by the source (this shard's).
    pub documents_listed: u64,
    /// Documents skipped because they were already committed.
    pub documents_skipped: u64,
    /// Documents committed by other runs overlapping this one, after this run listed them.
    pub documents_by_other_runs: u64,
    /// Documents this run claimed from a run that had stopped (crashed, killed or stalled).
    pub documents_taken_over: u64,
    /// Documents this run processed but could not commit, because another run took them over
    /// while this one was stalled; their rows were discarded (that run commits them).
    pub documents_lost: u64,
    /// What this run wrote: documents, rows and tokens.
    #[serde(flatten)]
    pub written: WrittenRows,
    /// Seconds spent per stage.
    pub seconds_by_stage: BTreeMap<String, f64>,
    /// Wall time of the run, from its start to this report: listing and model loading included.
    pub wall_seconds: f64,
    /// Generated tokens per second of wall time.
    pub answer_tokens_per_second: f64,
    /// Parts written by this run (earlier runs' parts not counted).
    pub parts_written: u64,
}

/// What a sink wrote: counted when parts are written, so rows a run discarded (see
/// [`RunReport::documents_lost`]) are not counted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrittenRows {
    /// Documents committed by this run.
    pub documents_committed: u64,
    /// Rows written by this run, answered plus failed.
    pub rows: u64,
    /// Rows with an answer.
    pub rows_answered: u64,
    /// Rows with an `error_stage`.
    pub rows_failed: u64,
    /// Failed rows per stage (`render`, `infer`, ...).
    pub errors_by_stage: BTreeMap<String, u64>,
    /// Sum of `prompt_tokens` over this run's rows.
    pub prompt_tokens: u64,
    /// Sum of `answer_tokens` over this run's rows.
    pub answer_tokens: u64,
}

impl WrittenRows {
    /// Counts one written row: answered or failed (by stage), and its tokens.
    pub fn record(&mut self, row: &OutputRow) {
        self.rows += 1;
        match row.error_stage {
            Some(stage) => {
                self.rows_failed += 1;
                *self
                    .errors_by_stage
                    .entry(stage.as_str().to_owned())
                    .or_default() += 1;
            }
            None => self.rows_answered += 1,
        }
        self.prompt_tokens += u64::from(row.prompt_tokens.unwrap_or(0));
        self.answer_tokens += u64::from(row.answer_tokens.unwrap_or(0));
    }
}

impl RunReport {
    /// Documents this run accounted for: committed by it, skipped as committed before it
    /// started, or committed by an overlapping run. Equal to `documents_listed` when the run
    /// (or shard) left nothing undone.
    pub fn documents_done(&self) -> u64 {
        self.written.documents_committed + self.documents_skipped + self.documents_by_other_runs
    }

    /// Sets the wall time and the throughput derived from it.
    pub fn set_wall_seconds(&mut self, seconds: f64) {
        self.wall_seconds = seconds;
        self.answer_tokens_per_second = if seconds > 0.0 {
            self.written.answer_tokens as f64 / seconds
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use docpipe_core::{DocumentRef, Failure, Stage};

    use super::*;

    #[test]
    fn counts_rows_by_outcome_and_stage() {
        let doc = DocumentRef::new("a.pdf");
        let mut answered = OutputRow::for_document(&doc, "r", "m", 0);
        answered.answer = Some("x".into());
        answered.prompt_tokens = Some(10);
        answered.answer_tokens = Some(4);
        let failed = OutputRow::for_document(&doc, "r", "m", 0)
            .with_failure(&Failure::new(Stage::Render, "a.pdf", "broken").on_page(2));
        assert_eq!(failed.page, Some(2));

        let mut report = RunReport::default();
        for row in [&answered, &answered, &failed] {
            report.written.record(row);
        }
        report.set_wall_seconds(2.0);
        let written = &report.written;
        assert_eq!(
            (written.rows, written.rows_answered, written.rows_failed),
            (3, 2, 1)
        );
        assert_eq!(written.errors_by_stage.get("render"), Some(&1));
        assert_eq!(written.answer_tokens, 8);
        assert_eq!(report.answer_tokens_per_second, 4.0);
    }
}
