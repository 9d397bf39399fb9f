//! Live progress: counters updated by the stages, shown as an indicatif bar on a terminal and as
//! periodic log lines otherwise (batch schedulers capture stderr into files).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters shared by the stages. Relaxed atomics: they are only read for display.
#[derive(Debug, Default)]
pub struct Counters {
    documents_total: AtomicU64,
    documents_done: AtomicU64,
    pages_rendered: AtomicU64,
    rows_written: AtomicU64,
    rows_failed: AtomicU64,
}

impl Counters {
    /// Sets how many documents this run processes (after skipping committed ones and applying
    /// `source.limit`): the bar's length.
    pub fn set_documents_total(&self, n: u64) {
        self.documents_total.store(n, Ordering::Relaxed);
    }
    /// Counts one page rendered.
    pub fn page_rendered(&self) {
        self.pages_rendered.fetch_add(1, Ordering::Relaxed);
    }
    /// A document this run meant to process was committed by an overlapping run.
    pub fn document_done_elsewhere(&self) {
        self.documents_done.fetch_add(1, Ordering::Relaxed);
    }
    /// A document's rows were committed.
    pub fn document_written(&self, rows: u64, failed: u64) {
        self.documents_done.fetch_add(1, Ordering::Relaxed);
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
        self.rows_failed.fetch_add(failed, Ordering::Relaxed);
    }
}

/// Shows progress until dropped.
pub struct ProgressDisplay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressDisplay {
    /// Starts the display on the current tokio runtime: a bar when stderr is a terminal,
    /// otherwise a log line every `log_every`.
    pub fn start(counters: Arc<Counters>, log_every: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let bar = terminal.then(|| {
                let bar =
                    indicatif::ProgressBar::new(counters.documents_total.load(Ordering::Relaxed));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:30}] {pos}/{len} documents, {msg}, ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            });
            let tick = if terminal {
                Duration::from_millis(200)
            } else {
                log_every
            };
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(tick) => {}
                }
                let line = status_line(&counters, started.elapsed());
                match &bar {
                    Some(bar) => {
                        bar.set_length(counters.documents_total.load(Ordering::Relaxed));
                        bar.set_position(counters.documents_done.load(Ordering::Relaxed));
                        bar.set_message(line);
                    }
                    None => tracing::info!(
                        "{}/{} documents, {line}",
                        counters.documents_done.load(Ordering::Relaxed),
                        counters.documents_total.load(Ordering::Relaxed)
                    ),
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the display and waits for it to clear the bar.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn status_line(counters: &Counters, elapsed: Duration) -> String {
    let rows = counters.rows_written.load(Ordering::Relaxed);
    format!(
        "{} pages, {rows} rows ({} failed), {:.1} rows/s",
        counters.pages_rendered.load(Ordering::Relaxed),
        counters.rows_failed.load(Ordering::Relaxed),
        rows as f64 / elapsed.as_secs_f64().max(1e-3)
    )
}
