//! A whole run: list the source, skip what the sink already committed, claim the rest on the
//! sink (exclusive runs, see [`crate::claimer`]), load the model, run the engine, commit
//! finished documents, then write the report and the manifest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use docpipe_core::DocumentRef;
use docpipe_core::{Shard, VisionLanguageModel};
use docpipe_hub::Checkpoint;
use docpipe_render::{
    DocumentOptions, PageSelection, RenderError, RenderPool, RenderPoolConfig, WorkerCommand,
};
use docpipe_sink::{unix_micros, Claims, RunManifest, RunReport, Sink, SinkError, SinkOptions};
use docpipe_source::{list_documents, Fetcher, ListingSpec, ManifestSpec, SourceError, SourceSpec};
use docpipe_store::{StoreError, StoreOptions, Stores};

use crate::claimer::{self, ClaimStats};
use crate::config::{expand_date, PipelineConfig};
use crate::engine::{self, EngineConfig, EngineError, FinishedDocument};
use crate::model::{self, LoadedModel, ModelLoadError};
use crate::pool::{PoolError, Replica};
use crate::progress::{Counters, ProgressDisplay};
use crate::queue::BatchBudget;
use crate::renderer::PoolRenderer;
use crate::rows::{output_rows, unasked_rows};
use crate::tasks::{DefaultPrompts, TaskPlan};

/// What a run needs besides its pipeline file.
pub struct RunOptions {
    /// The parsed and validated pipeline.
    pub config: PipelineConfig,
    /// How to start render workers (the `docpipe` binary's hidden `render-worker` mode).
    pub worker_command: WorkerCommand,
    /// Client and retry settings for every store the run opens (source, documents, sink).
    pub store_options: StoreOptions,
    /// Seconds between progress log lines when stderr is not a terminal.
    pub log_every: Duration,
    /// The slice of the source this process owns (`--shard I/N`); `None` for all of it.
    pub shard: Option<Shard>,
    /// `model.path` already resolved by the caller (`eval docvqa` resolves it to learn the
    /// family's prompt); `None` resolves it when the model loads. Saves a hub id at a branch
    /// its second metadata request.
    pub checkpoint: Option<Checkpoint>,
}

/// A run that finished: every listed document is committed.
#[derive(Debug)]
pub struct RunSummary {
    /// What the run did: counts, errors by stage, timings; also written as `report.json`.
    pub report: RunReport,
    /// The sink location, `{date}` expanded.
    pub sink_uri: String,
    /// False when a manifest was already there (a completed run was rerun): the data is
    /// complete but the earlier manifest was kept.
    pub manifest_written: bool,
}

/// Why a run did not finish. [`RunError::is_usage`] tells configuration errors (nothing run)
/// from runs cut short (rerun resumes).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The documents could not be listed (bad location or manifest, unreachable store).
    #[error("source.uri: {0}")]
    Source(#[source] SourceError),
    /// The sink could not be opened or listed, or writing a part, the report or the manifest
    /// failed.
    #[error("sink.uri: {0}")]
    Sink(#[source] SinkError),
    /// The model could not be loaded (bad checkpoint, unsupported family, no usable device).
    #[error("{key}: {error}", key = .0.key(), error = .0)]
    Model(#[from] ModelLoadError),
    /// The render worker processes could not be started (e.g. no pdfium library).
    #[error("render workers: {0}")]
    Render(#[source] RenderError),
    /// The engine stopped early: every replica failed, or the sink stopped taking documents.
    #[error("inference: {0}")]
    Engine(#[from] EngineError),
    /// A blocking task of the run (model loading, render pool start-up, the engine) panicked
    /// or was cancelled; the message is tokio's.
    #[error("a pipeline thread failed: {0}")]
    Join(String),
    /// Documents this run processed were taken over by a run that then stopped without
    /// committing them (this run was stalled past its hold meanwhile).
    #[error(
        "{} documents (first: {first}) were taken over from this run by runs that stopped \
         before committing them",
        .count
    )]
    Unfinished {
        /// How many.
        count: usize,
        /// The first one's URI.
        first: String,
    },
}

impl RunError {
    /// True when the configuration is at fault and nothing was run (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RunError::Source(
                SourceError::Store(StoreError::InvalidLocation { .. })
                    | SourceError::MissingFolder { .. }
                    | SourceError::Pattern { .. }
            ) | RunError::Sink(
                SinkError::Store(StoreError::InvalidLocation { .. })
                    | SinkError::KeyColumn { .. }
                    | SinkError::NoCreateOnly { .. }
            )
        ) || matches!(self, RunError::Model(e) if e.is_usage())
    }
}

/// Runs a pipeline to the end. Must be called inside a multi-threaded tokio runtime.
pub async fn run(options: RunOptions) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let run_id = new_run_id();
    let config = options.config;
    let sink_uri = expand_date(&config.sink.uri, SystemTime::now());
    let stores = Arc::new(Stores::new(options.store_options));
    let key_columns = config
        .source
        .manifest
        .as_ref()
        .map(|m| m.key_columns.clone())
        .unwrap_or_default();
    let sink = Sink::open(
        &stores,
        SinkOptions {
            shard: options.shard,
            key_columns,
            documents_per_part: config.sink.documents_per_part,
            ..SinkOptions::new(sink_uri.clone())
        },
    )
    .map_err(RunError::Sink)?;
    let source = source_spec(&config);
    let (listed, committed) = tokio::join!(
        list_documents(&source, &stores, options.shard),
        sink.committed()
    );
    let listed = listed.map_err(RunError::Source)?;
    let committed = committed.map_err(RunError::Sink)?;
    let documents_listed = listed.len();
    let mut todo: Vec<_> = listed
        .into_iter()
        .filter(|d| !committed.contains(d))
        .collect();
    let documents_skipped = documents_listed - todo.len();
    if let Some(limit) = config.source.limit {
        todo.truncate(limit);
    }
    tracing::info!(
        listed = documents_listed,
        skipped = documents_skipped,
        to_process = todo.len(),
        shard = %options.shard.map_or_else(|| "all".to_owned(), |s| s.to_string()),
        sink = %sink_uri,
        "documents listed"
    );
    Job {
        config,
        stores,
        sink,
        sink_uri,
        run_id,
        claims: None,
        todo,
        documents_listed,
        documents_skipped,
        shard: options.shard,
        checkpoint: options.checkpoint,
        worker_command: options.worker_command,
        log_every: options.log_every,
        started,
    }
    .load_and_run()
    .await
}

fn source_spec(config: &PipelineConfig) -> SourceSpec {
    let source = &config.source;
    match &source.manifest {
        None => {
            SourceSpec::Listing(ListingSpec::new(&source.uri).with_extensions(&source.extensions))
        }
        Some(manifest) => SourceSpec::Manifest(ManifestSpec {
            uri_column: manifest.uri_column.clone(),
            key_columns: manifest.key_columns.clone(),
            questions_column: manifest.questions_column.clone(),
            ..ManifestSpec::new(&source.uri)
        }),
    }
}

/// A run whose documents are listed (and, for an exclusive run, whose claims are started).
struct Job {
    config: PipelineConfig,
    stores: Arc<Stores>,
    sink: Sink,
    sink_uri: String,
    run_id: String,
    claims: Option<Arc<Claims>>,
    todo: Vec<DocumentRef>,
    documents_listed: usize,
    documents_skipped: usize,
    shard: Option<Shard>,
    checkpoint: Option<Checkpoint>,
    worker_command: WorkerCommand,
    log_every: Duration,
    started: Instant,
}

impl Job {
    /// Loads the model, then claims and processes the documents. Claims start only once the
    /// model is loaded, so a configuration error leaves nothing on the sink.
    async fn load_and_run(mut self) -> Result<RunSummary, RunError> {
        let model_config = self.config.model.clone();
        let checkpoint = self.checkpoint.take();
        let loaded = tokio::task::spawn_blocking(move || match checkpoint {
            Some(checkpoint) => model::load_resolved(&checkpoint, &model_config),
            None => model::load(&model_config),
        })
        .await
        .map_err(|e| RunError::Join(e.to_string()))??;
        if self.config.sink.exclusive && !self.todo.is_empty() {
            let hold = Duration::from_secs(self.config.sink.hold_s);
            let claims = self.sink.start_claims(&self.run_id, hold).await;
            self.claims = Some(claims.map_err(RunError::Sink)?);
        }
        let claims = self.claims.clone();
        let prompts = loaded.family().default_prompts();
        let result = match loaded {
            LoadedModel::Idefics2(replicas) => self.run(replicas, prompts).await,
            LoadedModel::Idefics3(replicas) => self.run(replicas, prompts).await,
            LoadedModel::Florence2(replicas) => self.run(replicas, prompts).await,
            LoadedModel::Idefics1(replicas) => self.run(replicas, prompts).await,
        };
        if let Some(claims) = claims {
            claims.end().await;
        }
        result
    }

    async fn run<M: VisionLanguageModel + 'static>(
        self,
        replicas: Vec<Replica<M>>,
        prompts: DefaultPrompts,
    ) -> Result<RunSummary, RunError> {
        let Job {
            config,
            stores,
            mut sink,
            sink_uri,
            run_id,
            claims,
            todo,
            documents_listed,
            documents_skipped,
            shard,
            checkpoint: _,
            worker_command,
            log_every,
            started,
        } = self;
        let model_id = replicas
            .first()
            .map(|r| r.model.model_id().to_owned())
            .unwrap_or_default();
        let mut report = RunReport {
            run_id: run_id.clone(),
            model: model_id.clone(),
            shard: shard.map(|shard| shard.to_string()),
            documents_listed: documents_listed as u64,
            documents_skipped: documents_skipped as u64,
            ..RunReport::default()
        };

        let render = &config.render;
        // Pages are rendered at the size the model keeps unless the pipeline says otherwise.
        let Some(longest_edge) = render
            .longest_edge
            .or_else(|| replicas.first().map(|r| r.model.image_longest_edge()))
        else {
            return Err(EngineError::Pool(PoolError::NoReplicaLeft {
                failures: Vec::new(),
                abandoned: 0,
            })
            .into());
        };
        let pool_config = RenderPoolConfig {
            workers: render.workers,
            range_pages: RenderPoolConfig::DEFAULT_RANGE_PAGES,
            longest_edge,
            page_timeout: Duration::from_secs(render.timeout_s),
            worker_command,
            pixel_budget: 100_000_000,
        };
        let render_pool = if todo.is_empty() {
            None
        } else {
            Some(
                tokio::task::spawn_blocking(move || RenderPool::new(pool_config))
                    .await
                    .map_err(|e| RunError::Join(e.to_string()))?
                    .map_err(RunError::Render)?,
            )
        };

        let counters = Arc::new(Counters::default());
        counters.set_documents_total(todo.len() as u64);
        let display = ProgressDisplay::start(counters.clone(), log_every);
        let (docs, claimer) = feed(todo, claims.as_ref(), render.workers, &counters);
        let (finished_tx, mut finished_rx) = tokio::sync::mpsc::channel::<FinishedDocument>(4);
        let engine = render_pool.map(|pool| {
            let renderer = Arc::new(PoolRenderer {
                pool,
                fetcher: Fetcher::new(stores.clone()),
                options: DocumentOptions {
                    pages: render
                        .max_pages
                        .and_then(|n| format!("1-{n}").parse::<PageSelection>().ok()),
                    password: None,
                },
                runtime: tokio::runtime::Handle::current(),
            });
            let plan = Arc::new(TaskPlan::new(
                config.tasks.clone(),
                config.model.max_new_tokens,
                prompts,
            ));
            let engine_config = EngineConfig {
                render_threads: render.workers,
                budget: BatchBudget {
                    tokens: config.model.batch_tokens,
                    patches: config.model.batch_patches,
                },
                batching: config.model.batching(),
                queue: config.model.queue,
            };
            let counters = counters.clone();
            tokio::task::spawn_blocking(move || {
                engine::run(
                    docs,
                    renderer,
                    replicas,
                    plan,
                    engine_config,
                    counters,
                    finished_tx,
                )
            })
        });

        let mut sink_time = Duration::ZERO;
        let tasks: Vec<String> = config.tasks.iter().map(|t| t.name().to_owned()).collect();
        let labels = RowLabels {
            run_id: &run_id,
            model_id: &model_id,
            tasks: &tasks,
        };
        let committed = commit_documents(
            &mut sink,
            &mut finished_rx,
            &counters,
            &mut sink_time,
            &labels,
        )
        .await;
        // Closing the channel stops the engine if the sink failed.
        drop(finished_rx);
        let engine_stats = match engine {
            Some(handle) => Some(handle.await.map_err(|e| RunError::Join(e.to_string()))?),
            None => None,
        };
        let claimed = match claimer {
            Some(handle) => handle.await.map_err(|e| RunError::Join(e.to_string()))?,
            None => Ok(ClaimStats::default()),
        };
        display.finish().await;
        committed.map_err(RunError::Sink)?;
        let engine_stats = match engine_stats.transpose() {
            Ok(stats) => stats,
            Err(error) => {
                // Keep the documents that did finish: the rerun will not redo them.
                if let Err(e) = sink.flush().await {
                    tracing::error!("could not write the last finished documents: {e}");
                }
                return Err(error.into());
            }
        };
        let claimed = claimed.map_err(RunError::Sink)?;
        report.documents_taken_over = claimed.taken_over;
        report.documents_by_other_runs = claimed.by_other_runs;

        let mut seconds_by_stage = BTreeMap::new();
        if let Some(stats) = &engine_stats {
            seconds_by_stage.insert("render".to_owned(), stats.render.as_secs_f64());
            seconds_by_stage.insert("prepare".to_owned(), stats.prepare.as_secs_f64());
            let infer: Duration = stats.replicas.iter().map(|r| r.busy).sum();
            seconds_by_stage.insert("infer".to_owned(), infer.as_secs_f64());
            for replica in &stats.replicas {
                tracing::info!(
                    device = %replica.device,
                    "replica answered {} requests: {} batches, {} decode steps, {} tokens, {:.2} s busy",
                    replica.requests,
                    replica.batches,
                    replica.decode_steps,
                    replica.generated_tokens,
                    replica.busy.as_secs_f64()
                );
            }
            for (device, failure) in stats
                .replicas
                .iter()
                .filter_map(|r| Some((&r.device, r.failure.as_ref()?)))
            {
                tracing::warn!(device = %device, "replica retired during the run: {failure}");
            }
        }
        let started_flush = Instant::now();
        sink.flush().await.map_err(RunError::Sink)?;
        sink_time += started_flush.elapsed();
        let unfinished = match &claims {
            Some(claims) => settle_lost(&sink, claims, &mut report).await?,
            None => Vec::new(),
        };
        seconds_by_stage.insert("sink".to_owned(), sink_time.as_secs_f64());
        report.seconds_by_stage = seconds_by_stage.clone();
        report.parts_written = sink.parts_written().len() as u64;
        report.written = sink.written().clone();
        report.set_wall_seconds(started.elapsed().as_secs_f64());
        sink.write_report(&report).await.map_err(RunError::Sink)?;
        if let Some(first) = unfinished.first() {
            return Err(RunError::Unfinished {
                count: unfinished.len(),
                first: first.uri.clone(),
            });
        }
        let manifest = RunManifest {
            run_id,
            model: model_id,
            started_at_ms: unix_millis(SystemTime::now() - started.elapsed()),
            seconds_by_stage,
            ..RunManifest::default()
        };
        let manifest_written = match sink.finish(manifest).await {
            Ok(_) => true,
            Err(SinkError::ManifestExists { url }) => {
                tracing::warn!("{url} already exists (an earlier run completed); it was kept");
                false
            }
            Err(e) => return Err(RunError::Sink(e)),
        };
        Ok(RunSummary {
            report,
            sink_uri,
            manifest_written,
        })
    }
}

/// The engine's documents: all of `todo`, or for an exclusive run the ones a claiming task gets
/// (with that task's handle).
type ClaimTask = tokio::task::JoinHandle<Result<ClaimStats, SinkError>>;

fn feed(
    todo: Vec<DocumentRef>,
    claims: Option<&Arc<Claims>>,
    render_threads: usize,
    counters: &Arc<Counters>,
) -> (
    Box<dyn Iterator<Item = DocumentRef> + Send>,
    Option<ClaimTask>,
) {
    let Some(claims) = claims else {
        return (Box::new(todo.into_iter()), None);
    };
    // Claimed documents wait here for a render thread; few, so claims stay close to the work.
    let (claimed, mut receiver) = tokio::sync::mpsc::channel(render_threads.max(1));
    let task = tokio::spawn(claimer::claim_documents(
        todo,
        claims.clone(),
        claimed,
        counters.clone(),
    ));
    (
        Box::new(std::iter::from_fn(move || receiver.blocking_recv())),
        Some(task),
    )
}

/// Waits for the documents this run lost to be committed by the runs that took them over;
/// counts them in the report and returns those nobody will commit.
async fn settle_lost(
    sink: &Sink,
    claims: &Claims,
    report: &mut RunReport,
) -> Result<Vec<docpipe_sink::DocumentKey>, RunError> {
    let lost = sink.lost_documents();
    report.documents_lost = lost.len() as u64;
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    tracing::warn!(
        "{} documents were taken over by other runs while this run was stalled; their rows \
         from this run were discarded",
        lost.len()
    );
    let settled = claimer::settle(lost, claims)
        .await
        .map_err(RunError::Sink)?;
    report.documents_by_other_runs += settled.committed;
    Ok(settled.open)
}

/// What the rows of this run are labelled with.
struct RowLabels<'a> {
    run_id: &'a str,
    model_id: &'a str,
    /// The `task` column of each configured task, for documents no task had a question for.
    tasks: &'a [String],
}

/// Commits finished documents as they arrive, and writes buffered ones when they get too old.
async fn commit_documents(
    sink: &mut Sink,
    finished: &mut tokio::sync::mpsc::Receiver<FinishedDocument>,
    counters: &Counters,
    sink_time: &mut Duration,
    labels: &RowLabels<'_>,
) -> Result<(), SinkError> {
    let RowLabels {
        run_id,
        model_id,
        tasks,
    } = *labels;
    loop {
        let next = match sink.flush_deadline() {
            Some(deadline) => tokio::select! {
                doc = finished.recv() => Some(doc),
                _ = tokio::time::sleep_until(deadline.into()) => None,
            },
            None => Some(finished.recv().await),
        };
        let started = Instant::now();
        match next {
            None => {
                sink.flush_if_due().await?;
            }
            Some(None) => return Ok(()),
            Some(Some(doc)) => {
                let now = unix_micros(SystemTime::now());
                let mut rows = output_rows(&doc, run_id, model_id, now);
                if rows.is_empty() {
                    tracing::warn!(doc = %doc.doc.uri, "no questions to ask about this document");
                    rows = unasked_rows(&doc.doc, tasks, run_id, model_id, now);
                }
                let failed = rows.iter().filter(|r| r.error_stage.is_some()).count();
                counters.document_written(rows.len() as u64, failed as u64);
                sink.commit_document(rows).await?;
            }
        }
        *sink_time += started.elapsed();
    }
}

/// Unique per invocation: the start time in milliseconds and the process id.
fn new_run_id() -> String {
    format!(
        "{:013}-{:08x}",
        unix_millis(SystemTime::now()),
        std::process::id()
    )
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
