//! The middle of a run: render → prepare → batch → infer → assemble, on threads.
//!
//! Render threads (one per render worker process) open documents, turn each page into one
//! prepared request per query (preparation runs on rayon) and push them into the inference
//! pool, blocking while its queue is full: that is how a slow model slows the renderer. An
//! assembler thread collects answers and failures per document and hands each document on,
//! complete, once every expected row (pages × queries) is in. Failures travel the same way as
//! answers, so a document always comes out with exactly one row per expected key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docpipe_core::{DocumentRef, Failure, Generation, PageImage, Stage, VisionLanguageModel};
use rayon::prelude::*;

use crate::pool::{
    Batching, Completed, InferencePool, Job, PoolError, Replica, ReplicaStats, Submitter,
};
use crate::progress::Counters;
use crate::queue::{BatchBudget, QueueClosed};
use crate::tasks::{chat_request, Query, TaskPlan};

/// A document opened for rendering: which pages will come, then the pages themselves.
pub struct OpenedDocument {
    /// Pages in the document, whatever was selected for rendering (the `page_count` column).
    pub page_count: u32,
    /// The pages that will be rendered (all of them unless limited), in order.
    pub pages: Vec<u32>,
    /// One item per entry of `pages`; a stream that stops early fails its remaining pages.
    pub stream: Box<dyn Iterator<Item = Result<PageImage, Failure>> + Send>,
}

/// Fetches and opens documents. The real one copies remote documents locally and renders them
/// in the render worker processes; tests use synthetic pages.
pub trait Renderer: Send + Sync {
    /// Called from a render thread; may block. A document that cannot be fetched or opened is a
    /// [`Failure`] (stage `source` or `render`), which becomes that document's error rows.
    fn open(&self, doc: &Arc<DocumentRef>) -> Result<OpenedDocument, Failure>;
}

/// An answered row.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The model's output: text, tokens and finish reason.
    pub generation: Generation,
    /// Wall time of the batch that produced it.
    pub latency: Duration,
}

/// One row of a finished document, before it becomes Arrow.
#[derive(Debug, Clone)]
pub struct RowOutcome {
    /// `None` when the document could not be opened, so its pages are unknown.
    pub page: Option<u32>,
    /// Index into [`FinishedDocument::queries`].
    pub query: usize,
    /// The answer, or why this row has none.
    pub result: Result<Answer, Failure>,
}

/// Everything a document produced: exactly one row per (page, query), sorted.
#[derive(Debug, Clone)]
pub struct FinishedDocument {
    /// The document, as the source listed it.
    pub doc: Arc<DocumentRef>,
    /// `None` when the document could not be opened.
    pub page_count: Option<u32>,
    /// What was asked of every page, in row order; the same for every page.
    pub queries: Arc<Vec<Query>>,
    /// Sorted by page, then query.
    pub rows: Vec<RowOutcome>,
}

/// Threads and budgets of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Threads that fetch, render and prepare documents, one document each at a time (at least 1;
    /// the run uses one per render worker).
    pub render_threads: usize,
    /// Limits on one model batch.
    pub budget: BatchBudget,
    /// Whether replicas batch continuously, where the model can.
    pub batching: Batching,
    /// Prepared requests that may wait for a replica before render threads block.
    pub queue: usize,
}

/// What the engine measured, for the run report.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Summed over render threads: time spent waiting for pages (fetch and render).
    pub render: Duration,
    /// Summed over render threads: wall time of preparing pages' requests on rayon.
    pub prepare: Duration,
    /// One entry per replica, in the order they were given.
    pub replicas: Vec<ReplicaStats>,
}

/// Why the engine stopped before processing every document.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No replica is left to run the remaining requests.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The receiver of finished documents was dropped (the sink failed), so the rest would be lost.
    #[error("the sink stopped accepting documents")]
    SinkClosed,
    /// The rayon pool for preparation could not be built.
    #[error("cannot start the preparation threads: {0}")]
    Threads(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Tag {
    doc: u64,
    page: u32,
    query: usize,
}

enum Event {
    /// A document's query list; `page_count` is known once it opened.
    Started {
        id: u64,
        doc: Arc<DocumentRef>,
        queries: Arc<Vec<Query>>,
    },
    Opened {
        id: u64,
        page_count: u32,
    },
    /// Rows that will arrive from the pool for this document.
    Expect {
        id: u64,
        rows: usize,
    },
    /// A row that failed before inference.
    Row {
        id: u64,
        row: RowOutcome,
    },
    /// The render thread is done with this document: no more `Expect` or `Row`.
    Rendered {
        id: u64,
    },
    Answered(Completed<Tag>),
}

impl From<Completed<Tag>> for Event {
    fn from(c: Completed<Tag>) -> Self {
        Event::Answered(c)
    }
}

/// Runs `docs` through render, prepare and inference, sending each document to `out` once all
/// of its rows are in. Blocks until done; `docs` may block too (an exclusive run's documents
/// arrive as they are claimed). Documents not finished when it fails are simply not sent (a
/// rerun redoes them).
pub fn run<M, R, D>(
    docs: D,
    renderer: Arc<R>,
    replicas: Vec<Replica<M>>,
    plan: Arc<TaskPlan>,
    config: EngineConfig,
    counters: Arc<Counters>,
    out: tokio::sync::mpsc::Sender<FinishedDocument>,
) -> Result<EngineStats, EngineError>
where
    M: VisionLanguageModel + 'static,
    R: Renderer + 'static,
    D: IntoIterator<Item = DocumentRef>,
    D::IntoIter: Send + 'static,
{
    let Some(preparer) = replicas.first().map(|r| r.model.clone()) else {
        return Err(PoolError::NoReplicaLeft {
            failures: Vec::new(),
            abandoned: 0,
        }
        .into());
    };
    // Preparation gets its own rayon pool: on the global one, a page's preparation would queue
    // behind the CPU model's own parallel kernels and the render threads would starve the model.
    let prepare_pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("prepare-{i}"))
            .build()
            .map_err(|e| EngineError::Threads(e.to_string()))?,
    );
    let (events, event_rx) = mpsc::channel::<Event>();
    let pool = InferencePool::start(
        replicas,
        config.budget,
        config.batching,
        config.queue,
        events.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sink_closed = Arc::new(AtomicBool::new(false));

    let assembler = {
        let stop = stop.clone();
        let sink_closed = sink_closed.clone();
        std::thread::Builder::new()
            .name("assemble".into())
            .spawn(move || {
                if let Err(SinkClosed) = assemble(event_rx, &out) {
                    sink_closed.store(true, Ordering::SeqCst);
                    stop.store(true, Ordering::SeqCst);
                }
            })
            .expect("spawning the assembler thread")
    };

    let docs: Box<dyn Iterator<Item = DocumentRef> + Send> = Box::new(docs.into_iter());
    let queue = Arc::new(Mutex::new(docs.enumerate()));
    let render_threads: Vec<_> = (0..config.render_threads.max(1))
        .map(|i| {
            let worker = RenderThread {
                renderer: renderer.clone(),
                model: preparer.clone(),
                prepare_pool: prepare_pool.clone(),
                plan: plan.clone(),
                submitter: pool.submitter(),
                events: events.clone(),
                stop: stop.clone(),
                counters: counters.clone(),
                stats: EngineStats::default(),
            };
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("render-{i}"))
                .spawn(move || worker.run(&queue))
                .expect("spawning a render thread")
        })
        .collect();
    drop(events);

    let mut stats = EngineStats::default();
    for thread in render_threads {
        if let Ok(s) = thread.join() {
            stats.render += s.render;
            stats.prepare += s.prepare;
        }
    }
    let pool_result = pool.finish();
    let _ = assembler.join();
    stats.replicas = pool_result?;
    if sink_closed.load(Ordering::SeqCst) {
        return Err(EngineError::SinkClosed);
    }
    Ok(stats)
}

/// Why a render thread stops taking documents: the pool has no replica left (its queue closed)
/// or another thread asked the run to stop. Either way the run ends with the engine's error.
struct Halted;

impl From<QueueClosed> for Halted {
    fn from(_: QueueClosed) -> Self {
        Halted
    }
}

/// The receiver of finished documents (the sink) went away.
struct SinkClosed;

struct RenderThread<M: VisionLanguageModel, R> {
    renderer: Arc<R>,
    model: Arc<M>,
    prepare_pool: Arc<rayon::ThreadPool>,
    plan: Arc<TaskPlan>,
    submitter: Submitter<M::Prepared, Tag>,
    events: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    stats: EngineStats,
}

type DocQueue = Mutex<std::iter::Enumerate<Box<dyn Iterator<Item = DocumentRef> + Send>>>;

impl<M: VisionLanguageModel, R: Renderer> RenderThread<M, R> {
    fn run(mut self, queue: &DocQueue) -> EngineStats {
        while !self.stop.load(Ordering::SeqCst) {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((id, doc)) = next else { break };
            if let Err(Halted) = self.document(id as u64, Arc::new(doc)) {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        self.stats
    }

    /// Sends every row of one document, as failures or as jobs for the pool.
    fn document(&mut self, id: u64, doc: Arc<DocumentRef>) -> Result<(), Halted> {
        let queries = Arc::new(self.plan.queries(&doc));
        self.send(Event::Started {
            id,
            doc: doc.clone(),
            queries: queries.clone(),
        });
        let result = self.pages(id, &doc, &queries);
        self.send(Event::Rendered { id });
        result
    }

    fn pages(&mut self, id: u64, doc: &Arc<DocumentRef>, queries: &[Query]) -> Result<(), Halted> {
        if queries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let opened = self.renderer.open(doc);
        self.stats.render += started.elapsed();
        let opened = match opened {
            Ok(opened) => opened,
            Err(failure) => {
                self.fail_rows(id, None, queries.len(), &failure);
                return Ok(());
            }
        };
        self.send(Event::Opened {
            id,
            page_count: opened.page_count,
        });
        let mut stream = opened.stream;
        for &page in &opened.pages {
            if self.stop.load(Ordering::SeqCst) {
                return Err(Halted);
            }
            let started = Instant::now();
            let item = stream.next();
            self.stats.render += started.elapsed();
            match item {
                Some(Ok(image)) if image.page == page => {
                    self.counters.page_rendered();
                    self.page(id, &image, queries)?;
                }
                Some(Ok(image)) => {
                    let failure = Failure::new(
                        Stage::Render,
                        &doc.uri,
                        format!(
                            "the renderer returned page {} where page {page} was expected",
                            image.page
                        ),
                    );
                    self.fail_rows(id, Some(page), queries.len(), &failure);
                }
                Some(Err(failure)) => self.fail_rows(id, Some(page), queries.len(), &failure),
                None => {
                    let failure = Failure::new(
                        Stage::Render,
                        &doc.uri,
                        "rendering stopped before this page",
                    );
                    self.fail_rows(id, Some(page), queries.len(), &failure);
                }
            }
        }
        Ok(())
    }

    /// Prepares one page's requests on rayon and submits them.
    fn page(&mut self, id: u64, image: &PageImage, queries: &[Query]) -> Result<(), Halted> {
        let started = Instant::now();
        let model = &*self.model;
        let prepared: Vec<_> = self.prepare_pool.install(|| {
            queries
                .par_iter()
                .map(|query| model.prepare(&chat_request(query, &image.image)))
                .collect()
        });
        self.stats.prepare += started.elapsed();
        let expected = prepared.iter().filter(|p| p.is_ok()).count();
        self.send(Event::Expect { id, rows: expected });
        let image_group = (id << 32) | u64::from(image.page);
        for (query, prepared) in prepared.into_iter().enumerate() {
            match prepared {
                Ok(prepared) => {
                    let tag = Tag {
                        doc: id,
                        page: image.page,
                        query,
                    };
                    let job = Job::new(model, tag, prepared, image_group);
                    self.submitter.submit(job)?;
                }
                Err(error) => {
                    let failure = Failure::new(Stage::Prepare, &image.doc.uri, error.to_string())
                        .on_page(image.page);
                    self.send(Event::Row {
                        id,
                        row: RowOutcome {
                            page: Some(image.page),
                            query,
                            result: Err(failure),
                        },
                    });
                }
            }
        }
        Ok(())
    }

    fn fail_rows(&self, id: u64, page: Option<u32>, queries: usize, failure: &Failure) {
        let mut failure = failure.clone();
        failure.page = page;
        for query in 0..queries {
            self.send(Event::Row {
                id,
                row: RowOutcome {
                    page,
                    query,
                    result: Err(failure.clone()),
                },
            });
        }
    }

    fn send(&self, event: Event) {
        // The assembler outlives every render thread; a send can only fail if it panicked.
        let _ = self.events.send(event);
    }
}

struct Assembling {
    doc: Arc<DocumentRef>,
    queries: Arc<Vec<Query>>,
    page_count: Option<u32>,
    rows: Vec<RowOutcome>,
    /// Rows announced by `Expect` and not yet answered.
    awaited: usize,
    rendered: bool,
}

/// Collects rows per document and sends each document once complete.
fn assemble(
    events: mpsc::Receiver<Event>,
    out: &tokio::sync::mpsc::Sender<FinishedDocument>,
) -> Result<(), SinkClosed> {
    let mut docs: HashMap<u64, Assembling> = HashMap::new();
    for event in events {
        let id = match event {
            Event::Started { id, doc, queries } => {
                docs.insert(
                    id,
                    Assembling {
                        doc,
                        queries,
                        page_count: None,
                        rows: Vec::new(),
                        awaited: 0,
                        rendered: false,
                    },
                );
                continue;
            }
            Event::Opened { id, page_count } => {
                docs.entry(id)
                    .and_modify(|d| d.page_count = Some(page_count));
                continue;
            }
            Event::Expect { id, rows } => {
                docs.entry(id).and_modify(|d| d.awaited += rows);
                continue;
            }
            Event::Row { id, row } => {
                docs.entry(id).and_modify(|d| d.rows.push(row));
                continue;
            }
            Event::Rendered { id } => {
                docs.entry(id).and_modify(|d| d.rendered = true);
                id
            }
            Event::Answered(completed) => {
                let Tag { doc, page, query } = completed.tag;
                docs.entry(doc).and_modify(|d| {
                    d.awaited -= 1;
                    d.rows.push(RowOutcome {
                        page: Some(page),
                        query,
                        result: completed
                            .result
                            .map(|generation| Answer {
                                generation,
                                latency: completed.latency,
                            })
                            .map_err(|error| {
                                Failure::new(Stage::Infer, &d.doc.uri, error.to_string())
                                    .on_page(page)
                            }),
                    });
                });
                doc
            }
        };
        if docs.get(&id).is_some_and(|d| d.rendered && d.awaited == 0) {
            let mut done = docs.remove(&id).expect("checked above");
            done.rows.sort_by_key(|r| (r.page, r.query));
            let finished = FinishedDocument {
                doc: done.doc,
                page_count: done.page_count,
                queries: done.queries,
                rows: done.rows,
            };
            out.blocking_send(finished).map_err(|_| SinkClosed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::model::Family;
    use crate::test_model::{echo_answer, EchoModel};
    use crate::test_pipeline::{test_config, QUERIES_PER_PAGE};

    /// Documents named `pages-N` have N pages of N+page pixels wide; `broken` cannot be opened;
    /// page 2 of `badpage-N` fails; `short-N` stops after its first page.
    struct FakeRenderer;

    impl Renderer for FakeRenderer {
        fn open(&self, doc: &Arc<DocumentRef>) -> Result<OpenedDocument, Failure> {
            let (kind, n) = doc.uri.rsplit_once('-').unwrap_or((doc.uri.as_str(), "0"));
            let n: u32 = n.parse().unwrap_or(0);
            if kind == "broken" {
                return Err(Failure::new(Stage::Render, &doc.uri, "not a PDF"));
            }
            let doc = doc.clone();
            let kind = kind.to_owned();
            let shown = if kind == "short" { 1 } else { n };
            let stream = (1..=shown).map(move |page| {
                if kind == "badpage" && page == 2 {
                    return Err(
                        Failure::new(Stage::Render, &doc.uri, "page 2 is damaged").on_page(page)
                    );
                }
                Ok(PageImage {
                    doc: doc.clone(),
                    page,
                    page_count: n,
                    image: Arc::new(image::RgbImage::new(n + page, 4)),
                    text: String::new(),
                })
            });
            Ok(OpenedDocument {
                page_count: n,
                pages: (1..=n).collect(),
                stream: Box::new(stream),
            })
        }
    }

    fn run_docs(
        uris: &[&str],
        models: Vec<Arc<EchoModel>>,
    ) -> (Result<EngineStats, EngineError>, Vec<FinishedDocument>) {
        let config = test_config(&[]);
        let plan = Arc::new(TaskPlan::new(
            config.tasks,
            config.model.max_new_tokens,
            Family::Idefics2.default_prompts(),
        ));
        let replicas = models
            .into_iter()
            .map(|model| Replica {
                device: docpipe_core::DeviceSpec::Cpu.into(),
                model,
            })
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let collector = std::thread::spawn(move || {
            let mut docs = Vec::new();
            while let Some(doc) = rx.blocking_recv() {
                docs.push(doc);
            }
            docs
        });
        let result = run(
            uris.iter()
                .map(|u| DocumentRef::new(*u))
                .collect::<Vec<_>>(),
            Arc::new(FakeRenderer),
            replicas,
            plan,
            EngineConfig {
                render_threads: 2,
                budget: BatchBudget {
                    tokens: 400,
                    patches: 300,
                },
                batching: Batching::Continuous,
                queue: 3,
            },
            Arc::new(Counters::default()),
            tx,
        );
        (result, collector.join().unwrap())
    }

    #[test]
    fn every_expected_row_comes_out_once_with_failures_as_rows() {
        let uris = ["pages-3", "broken-1", "badpage-4", "short-3", "pages-1"];
        let flaky = Arc::new(EchoModel::failing_after(2));
        let healthy = Arc::new(EchoModel::waiting_for_failure_of(&flaky));
        let (result, docs) = run_docs(&uris, vec![flaky, healthy]);
        let stats = result.unwrap();
        assert_eq!(
            stats
                .replicas
                .iter()
                .filter(|r| r.failure.is_some())
                .count(),
            1
        );
        assert_eq!(docs.len(), uris.len());
        for doc in &docs {
            let queries = doc.queries.len();
            assert_eq!(queries, QUERIES_PER_PAGE);
            let keys: HashSet<(Option<u32>, usize)> =
                doc.rows.iter().map(|r| (r.page, r.query)).collect();
            assert_eq!(
                keys.len(),
                doc.rows.len(),
                "{}: duplicate rows",
                doc.doc.uri
            );
            for row in &doc.rows {
                let query = &doc.queries[row.query];
                match (&row.result, doc.doc.uri.as_str(), row.page) {
                    (Err(f), "broken-1", None) => assert_eq!(f.stage, Stage::Render),
                    (Err(f), "badpage-4", Some(2)) => assert_eq!(f.message, "page 2 is damaged"),
                    (Err(f), "short-3", Some(2 | 3)) => assert!(f.message.contains("stopped")),
                    (Ok(answer), _, Some(page)) => {
                        let n = doc.page_count.unwrap();
                        assert_eq!(
                            answer.generation.text,
                            echo_answer(&query.prompt, &[(n + page, 4)])
                        );
                    }
                    (other, uri, page) => panic!("{uri} page {page:?}: unexpected {other:?}"),
                }
            }
            let expected = match doc.doc.uri.as_str() {
                "broken-1" => queries,
                uri => queries * uri.rsplit_once('-').unwrap().1.parse::<usize>().unwrap(),
            };
            assert_eq!(doc.rows.len(), expected, "{}", doc.doc.uri);
        }
    }

    #[test]
    fn a_run_without_replicas_fails_and_sends_no_partial_document() {
        let models = vec![Arc::new(EchoModel::failing_after(1))];
        let (result, docs) = run_docs(&["pages-4", "pages-5", "pages-6"], models);
        assert!(matches!(
            result,
            Err(EngineError::Pool(PoolError::NoReplicaLeft { .. }))
        ));
        for doc in docs {
            assert!(doc.rows.iter().all(|r| r.result.is_ok()), "{}", doc.doc.uri);
        }
    }
}
