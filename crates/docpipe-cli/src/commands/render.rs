//! `docpipe render`: PDFs and images to page PNGs, through the render worker pool.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use docpipe_render::{DocumentOptions, PageSelection, RenderError, RenderPool, RenderPoolConfig};
use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{anyhow, Context};

use crate::exit::{CommandError, Outcome, ResultExt};

/// File extensions picked up when walking folders.
const EXTENSIONS: &[&str] = &["pdf", "png", "jpg", "jpeg", "tif", "tiff"];

/// Without a terminal, progress is a log line this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Render PDF pages and images (PNG, JPEG, TIFF) to `DIR/<file stem>/page-0001.png`, ….
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Documents, or folders searched recursively for .pdf/.png/.jpg/.jpeg/.tif/.tiff files.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    inputs: Vec<PathBuf>,
    /// Output folder; each document gets a sub-folder named after its file stem.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Pixels on the longest edge of every page; the aspect ratio is kept.
    #[arg(long, default_value_t = 980, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    longest_edge: u32,
    /// Worker processes (default: one per CPU); a large document is shared among them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Pages a worker takes from a document at a time; idle workers take further ranges.
    #[arg(long, default_value_t = RenderPoolConfig::DEFAULT_RANGE_PAGES as u32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    range_pages: u32,
    /// Pages to render, e.g. `1-3,7,10-`; pages past a document's end are skipped.
    #[arg(long)]
    pages: Option<PageSelection>,
    /// Password of encrypted PDFs.
    #[arg(long)]
    password: Option<String>,
    /// Seconds a worker may spend on one page before it is killed and the document fails.
    #[arg(long, default_value_t = 60.0, value_parser = positive_seconds)]
    page_timeout: f64,
    /// Pages, and images inside pages, with more pixels than this are refused.
    #[arg(long, default_value_t = 100_000_000)]
    max_pixels: u64,
}

/// The hidden worker mode takes no options: everything arrives over stdin.
#[derive(Args, Debug)]
pub struct WorkerArgs {}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

pub fn worker(_args: WorkerArgs) -> Result<Outcome, CommandError> {
    docpipe_render::worker::run_stdio()
        .context("render-worker: the pool's pipe failed")
        .incomplete()?;
    Ok(Outcome::Success)
}

/// One document to render and where its pages go.
struct Task {
    input: PathBuf,
    out_dir: PathBuf,
}

/// What happened to one document.
struct DocumentOutcome {
    input: PathBuf,
    pages: usize,
    errors: Vec<RenderError>,
}

pub fn run(args: RenderArgs) -> Result<Outcome, CommandError> {
    let started = Instant::now();
    let documents = find_documents(&args.inputs).usage()?;
    let (tasks, clashes) = assign_output_dirs(documents, &args.out);

    // The defaults start workers as this executable's `render-worker` mode.
    let mut config = RenderPoolConfig::new()
        .context("cannot find the docpipe executable to start workers")
        .incomplete()?;
    if let Some(workers) = args.workers {
        config.workers = workers as usize;
    }
    // Not capped by the number of documents: the pages of one document are shared out too.
    config.range_pages = args.range_pages as usize;
    config.longest_edge = args.longest_edge;
    config.page_timeout = Duration::from_secs_f64(args.page_timeout);
    config.pixel_budget = args.max_pixels;
    let pool = match RenderPool::new(config) {
        Ok(pool) => pool,
        Err(e @ RenderError::LibraryNotFound { .. }) => return Err(e).usage(),
        Err(e) => return Err(e).incomplete(),
    };
    let options = DocumentOptions {
        pages: args.pages.clone(),
        password: args.password.clone(),
    };

    let total = tasks.len() + clashes.len();
    let progress = Progress::new(total as u64);
    let mut failed = 0;
    let mut pages = 0;
    for clash in clashes {
        failed += 1;
        progress.fail(&clash);
    }
    let next = AtomicUsize::new(0);
    let (sender, outcomes) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..pool.config().workers {
            let sender = sender.clone();
            let (pool, tasks, next, options) = (&pool, &tasks, &next, &options);
            scope.spawn(move || {
                while let Some(task) = tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if sender.send(render_one(pool, task, options)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        for outcome in outcomes {
            pages += outcome.pages;
            if let Some(first) = outcome.errors.first() {
                failed += 1;
                let more = match outcome.errors.len() - 1 {
                    0 => String::new(),
                    n => format!(" (and {n} more errors)"),
                };
                progress.fail(&format!("{first}{more}"));
            }
            progress.document_done(&outcome.input, pages);
        }
    });
    progress.finish();

    println!(
        "rendered {} of {total} documents ({pages} pages) into {} in {:.1}s{}",
        total - failed,
        args.out.display(),
        started.elapsed().as_secs_f64(),
        if failed > 0 {
            format!("; {failed} failed")
        } else {
            String::new()
        }
    );
    Ok(Outcome::from_failures(failed as u64))
}

fn render_one(pool: &RenderPool, task: &Task, options: &DocumentOptions) -> DocumentOutcome {
    let mut outcome = DocumentOutcome {
        input: task.input.clone(),
        pages: 0,
        errors: Vec::new(),
    };
    match pool.render_to_png(&task.input, options, &task.out_dir) {
        Ok(stream) => {
            for page in stream {
                match page {
                    Ok(_) => outcome.pages += 1,
                    Err(e) => outcome.errors.push(e),
                }
            }
        }
        Err(e) => outcome.errors.push(e),
    }
    outcome
}

/// Expands folders (recursively, sorted, by extension) and checks that every input exists.
fn find_documents(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut documents = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut documents)
                .with_context(|| format!("cannot list {}", input.display()))?;
        } else if input.exists() {
            documents.push(input.clone());
        } else {
            return Err(anyhow!("{}: no such file or folder", input.display()));
        }
    }
    if documents.is_empty() {
        return Err(anyhow!(
            "no documents (.{}) found in the inputs",
            EXTENSIONS.join(", .")
        ));
    }
    Ok(documents)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, found)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            found.push(path);
        }
    }
    Ok(())
}

/// `DIR/<stem>` for each document; a second document with the same stem is reported instead
/// of overwriting the first one's pages.
fn assign_output_dirs(documents: Vec<PathBuf>, out: &Path) -> (Vec<Task>, Vec<String>) {
    let mut owners: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut tasks = Vec::new();
    let mut clashes = Vec::new();
    for input in documents {
        let stem = input.file_stem().unwrap_or(input.as_os_str());
        let out_dir = out.join(stem);
        if let Some(owner) = owners.get(&out_dir) {
            clashes.push(format!(
                "{}: output folder {} is already used by {}; rename one of them",
                input.display(),
                out_dir.display(),
                owner.display()
            ));
            continue;
        }
        owners.insert(out_dir.clone(), input.clone());
        tasks.push(Task { input, out_dir });
    }
    (tasks, clashes)
}

/// A bar on a terminal, a log line every few seconds otherwise. Failures are printed as they
/// happen, one line each.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::cell::Cell<u64>,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} documents, {msg} [{elapsed_precise}, eta {eta}]",
                )
                .expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: std::cell::Cell::new(0),
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    fn fail(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("failed: {line}")),
            None => eprintln!("failed: {line}"),
        }
    }

    fn document_done(&self, input: &Path, pages: usize) {
        self.done.set(self.done.get() + 1);
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{pages} pages"));
                bar.inc(1);
            }
            None if self.last_log.get().elapsed() >= LOG_EVERY => {
                self.last_log.set(Instant::now());
                tracing::info!(
                    "rendered {}/{} documents ({pages} pages), last {}",
                    self.done.get(),
                    self.total,
                    input.display()
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
