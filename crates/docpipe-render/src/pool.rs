//! The pool of worker processes: starting them, lending them to page streams (see
//! [`crate::PageStream`]) and replacing the ones that died.

use std::ffi::OsString;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use image::RgbImage;

use crate::error::RenderError;
use crate::page::{RenderedPage, SavedPage};
use crate::pages::PageSelection;
use crate::protocol::{read_frame, Job, Reply};
use crate::stream::PageStream;

/// How to start a worker: the program, its arguments and extra environment variables (the
/// worker otherwise inherits this process's environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The executable to run.
    pub program: PathBuf,
    /// Its arguments, e.g. `render-worker` for the `docpipe` binary.
    pub args: Vec<OsString>,
    /// Variables set on top of the inherited environment, e.g. `PDFIUM_LIB` (see
    /// [`crate::library::locate`]).
    pub env: Vec<(OsString, OsString)>,
}

impl WorkerCommand {
    /// The running executable in its hidden `render-worker` mode: right for the `docpipe` binary.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?).arg("render-worker"))
    }

    /// Runs `program` with no arguments and the inherited environment.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        WorkerCommand {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the worker.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn describe(&self) -> String {
        let mut text = self.program.display().to_string();
        for arg in &self.args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }
}

/// Settings of a [`RenderPool`].
#[derive(Debug, Clone)]
pub struct RenderPoolConfig {
    /// Worker processes, each with its own pdfium: the most documents rendered at once, and the
    /// most workers one document's pages are shared among.
    pub workers: usize,
    /// Pages a worker is given at a time. A document with more pages is handed out in ranges
    /// of this many, to the worker that opened it and to any worker that is idle meanwhile, so
    /// one large document does not leave the other workers idle. Small ranges balance better;
    /// each range costs one request round trip (the worker keeps the document open).
    pub range_pages: usize,
    /// Pages are scaled so that their longest edge has this many pixels.
    pub longest_edge: u32,
    /// A worker that takes longer than this for one page (or to open a document) is killed.
    pub page_timeout: Duration,
    /// Pages, and images inside pages, with more pixels than this are refused before anything
    /// is allocated for them.
    pub pixel_budget: u64,
    /// How to start a worker process (default: [`WorkerCommand::current_exe`]).
    pub worker_command: WorkerCommand,
}

impl RenderPoolConfig {
    /// Pages per range by default. A worker sending pixels runs at most about two pages ahead
    /// of the reader, so with two-page ranges it finishes its range while the reader is still on
    /// another worker's; the request round trip per range costs no measurable time.
    pub const DEFAULT_RANGE_PAGES: usize = 2;

    /// Defaults: one worker per CPU, ranges of [`RenderPoolConfig::DEFAULT_RANGE_PAGES`] pages,
    /// 980 px, 60 s a page, 100 megapixels, and the current executable's `render-worker` mode.
    pub fn new() -> std::io::Result<Self> {
        Ok(RenderPoolConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            range_pages: Self::DEFAULT_RANGE_PAGES,
            longest_edge: 980,
            page_timeout: Duration::from_secs(60),
            pixel_budget: 100_000_000,
            worker_command: WorkerCommand::current_exe()?,
        })
    }
}

/// Per-document options.
#[derive(Debug, Clone, Default)]
pub struct DocumentOptions {
    /// `None` renders every page.
    pub pages: Option<PageSelection>,
    /// Password for encrypted PDFs; ignored for other files. Without one an encrypted PDF fails
    /// with [`RenderError::Encrypted`].
    pub password: Option<String>,
}

/// A pool of render worker processes. Cheap to clone and safe to share between threads: each
/// [`RenderPool::render`] call borrows a worker for the document (waiting when all are busy)
/// and, while other documents are not waiting for one, borrows idle workers too for further
/// ranges of its pages. Dead or stuck workers are killed and replaced by fresh ones on demand.
#[derive(Clone)]
pub struct RenderPool {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: RenderPoolConfig,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Worker>,
    /// Workers alive, idle or lent out.
    live: usize,
    /// Callers blocked in [`Shared::checkout`]: while any wait, streams take no extra workers,
    /// so a new document is never starved by one large one.
    waiting: usize,
}

impl RenderPool {
    /// Starts every worker and waits for each to load pdfium, so that a missing library or a
    /// wrong worker command shows up here rather than on the first document.
    pub fn new(config: RenderPoolConfig) -> Result<Self, RenderError> {
        let workers = config.workers.max(1);
        let started = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| scope.spawn(|| Worker::start(&config)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker start-up does not panic"))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(RenderPool {
            shared: Arc::new(Shared {
                state: Mutex::new(PoolState {
                    live: started.len(),
                    idle: started,
                    waiting: 0,
                }),
                returned: Condvar::new(),
                config: RenderPoolConfig {
                    workers,
                    range_pages: config.range_pages.max(1),
                    ..config
                },
            }),
        })
    }

    /// The settings the pool runs with (`workers` and `range_pages` at least 1).
    pub fn config(&self) -> &RenderPoolConfig {
        &self.shared.config
    }

    /// Opens `path` and returns a stream of its pages with their RGB pixels. Returns an error
    /// when the document cannot be opened at all; page-level errors come through the stream.
    pub fn render(
        &self,
        path: &Path,
        options: &DocumentOptions,
    ) -> Result<PageStream<RenderedPage>, RenderError> {
        self.open(path, options, None)
    }

    /// Like [`RenderPool::render`], but the worker writes each page to `dir/page-NNNN.png`
    /// itself and only the file's name comes back: no pixels cross the process boundary, and
    /// PNG encoding runs in parallel across workers.
    pub fn render_to_png(
        &self,
        path: &Path,
        options: &DocumentOptions,
        dir: &Path,
    ) -> Result<PageStream<SavedPage>, RenderError> {
        self.open(path, options, Some(dir.to_path_buf()))
    }

    fn open<T: FromReply>(
        &self,
        path: &Path,
        options: &DocumentOptions,
        png_dir: Option<PathBuf>,
    ) -> Result<PageStream<T>, RenderError> {
        let config = &self.shared.config;
        let job = Job {
            // Workers may run in another directory; messages keep the caller's spelling.
            path: std::path::absolute(path).map_err(|e| RenderError::Io {
                path: path.to_path_buf(),
                message: format!("cannot resolve the path: {e}"),
            })?,
            password: options.password.clone(),
            longest_edge: config.longest_edge,
            pixel_budget: config.pixel_budget,
            png_dir,
        };
        PageStream::open(self.shared.clone(), job, options.pages.clone(), path)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle worker, a freshly started one when fewer than `workers` are alive, or the next
    /// one given back.
    pub(crate) fn checkout(&self) -> Result<Worker, RenderError> {
        let mut state = self.lock();
        loop {
            if let Some(worker) = self.take_idle(&mut state) {
                return Ok(worker);
            }
            if state.live < self.config.workers {
                return self.start(state);
            }
            state.waiting += 1;
            state = self.returned.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting -= 1;
        }
    }

    /// Like [`Shared::checkout`] but never waits, and yields nothing while others wait: how a
    /// stream borrows extra workers for more of its document's pages.
    pub(crate) fn try_checkout(&self) -> Option<Worker> {
        let mut state = self.lock();
        if state.waiting > 0 {
            return None;
        }
        if let Some(worker) = self.take_idle(&mut state) {
            return Some(worker);
        }
        if state.live < self.config.workers {
            return self
                .start(state)
                .inspect_err(|e| tracing::warn!("no extra render worker: {e}"))
                .ok();
        }
        None
    }

    /// Whether a caller is waiting for a worker: a stream then gives back workers it could do
    /// without.
    pub(crate) fn others_waiting(&self) -> bool {
        self.lock().waiting > 0
    }

    fn take_idle(&self, state: &mut PoolState) -> Option<Worker> {
        while let Some(mut worker) = state.idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
            // Died while idle (killed from outside): replace it rather than fail a document.
            state.live -= 1;
        }
        None
    }

    /// Starts a worker in a slot counted as live, outside the lock (start-up takes a while).
    fn start(&self, mut state: MutexGuard<'_, PoolState>) -> Result<Worker, RenderError> {
        state.live += 1;
        drop(state);
        let started = Worker::start(&self.config);
        if started.is_err() {
            self.lock().live -= 1;
            self.returned.notify_one();
        }
        started
    }

    pub(crate) fn give_back(&self, worker: Worker) {
        self.lock().idle.push(worker);
        self.returned.notify_one();
    }

    pub(crate) fn retire(&self, worker: Worker) {
        drop(worker);
        self.lock().live -= 1;
        self.returned.notify_one();
    }
}

/// One worker process. Replies are read by a thread into a channel of capacity one, so the
/// worker renders the next page while the caller handles the current one, yet a caller that
/// stops reading stops the worker instead of filling memory.
pub(crate) struct Worker {
    child: Child,
    pub(crate) stdin: BufWriter<ChildStdin>,
    replies: Receiver<std::io::Result<(Reply, Vec<u8>)>>,
}

impl Worker {
    fn start(config: &RenderPoolConfig) -> Result<Worker, RenderError> {
        let command = &config.worker_command;
        let start_error = |reason: String| RenderError::WorkerStart {
            command: command.describe(),
            reason,
        };
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| start_error(format!("cannot start: {e}")))?;
        let stdin = BufWriter::new(child.stdin.take().expect("piped"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let max_payload = config.pixel_budget.saturating_mul(3);
        let (sender, replies) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("render-worker-reader".into())
            .spawn(move || loop {
                let frame = match read_frame::<Reply>(&mut stdout, max_payload) {
                    Ok(Some(frame)) => Ok(frame),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let failed = frame.is_err();
                if sender.send(frame).is_err() || failed {
                    break;
                }
            })
            .map_err(|e| start_error(format!("cannot start its reader thread: {e}")))?;
        let mut worker = Worker {
            child,
            stdin,
            replies,
        };
        match worker.replies.recv_timeout(config.page_timeout) {
            Ok(Ok((Reply::Ready, _))) => Ok(worker),
            Ok(Ok((Reply::Failed { problem }, _))) => {
                Err(problem.into_error(PathBuf::from(&command.program)))
            }
            Ok(Ok((other, _))) => Err(start_error(format!("unexpected first reply {other:?}"))),
            Ok(Err(e)) => Err(start_error(format!("unreadable start-up reply: {e}"))),
            Err(RecvTimeoutError::Timeout) => Err(start_error(format!(
                "not ready after {:.0}s",
                config.page_timeout.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                let status = worker.kill();
                Err(start_error(format!("exited during start-up ({status})")))
            }
        }
    }

    /// The next reply, waiting at most `timeout`. On an error the process has been killed and
    /// the caller retires the worker; the error names `path` and the `page` awaited.
    pub(crate) fn reply(
        &mut self,
        timeout: Duration,
        path: &Path,
        page: Option<u32>,
    ) -> Result<(Reply, Vec<u8>), RenderError> {
        let path = path.to_path_buf();
        match self.replies.recv_timeout(timeout) {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                self.kill();
                Err(RenderError::Protocol {
                    path,
                    reason: format!("unreadable reply: {e}"),
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(RenderError::Timeout {
                    path,
                    page,
                    timeout,
                })
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => Err(RenderError::WorkerCrashed {
                path,
                page,
                status: self.kill(),
            }),
        }
    }

    /// Kills the process (if still running) and says how it ended.
    pub(crate) fn kill(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.to_string();
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("status unknown: {e}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Page items a stream can produce from the worker's replies.
pub trait FromReply: Sized + private::Sealed {
    #[doc(hidden)]
    fn from_reply(reply: private::PageReply) -> Option<Self>;
}

pub(crate) mod private {
    use std::path::PathBuf;

    pub trait Sealed {}
    impl Sealed for crate::RenderedPage {}
    impl Sealed for crate::SavedPage {}

    /// One page reply: its header fields and the payload that followed it.
    pub struct PageReply {
        pub page: u32,
        pub page_count: u32,
        pub width: u32,
        pub height: u32,
        pub text: String,
        pub png: Option<PathBuf>,
        pub payload: Vec<u8>,
    }
}

impl FromReply for RenderedPage {
    fn from_reply(reply: private::PageReply) -> Option<Self> {
        Some(RenderedPage {
            page: reply.page,
            page_count: reply.page_count,
            image: RgbImage::from_raw(reply.width, reply.height, reply.payload)?,
            text: reply.text,
        })
    }
}

impl FromReply for SavedPage {
    fn from_reply(reply: private::PageReply) -> Option<Self> {
        Some(SavedPage {
            page: reply.page,
            page_count: reply.page_count,
            width: reply.width,
            height: reply.height,
            path: reply.png?,
            text: reply.text,
        })
    }
}
