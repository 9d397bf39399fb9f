//! The pool of worker processes and the per-document page streams.

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
use crate::protocol::{read_frame, write_frame, Job, Reply};

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
    /// Worker processes, each with its own pdfium; also the number of documents rendered at once.
    pub workers: usize,
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
    /// Defaults: one worker per CPU, 980 px, 60 s a page, 100 megapixels, and the current
    /// executable's `render-worker` mode.
    pub fn new() -> std::io::Result<Self> {
        Ok(RenderPoolConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
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
/// [`RenderPool::render`] call borrows an idle worker for the whole document (waiting when all
/// are busy) and gives it back when the document's stream ends. Dead or stuck workers are
/// killed and replaced by fresh ones on demand.
#[derive(Clone)]
pub struct RenderPool {
    shared: Arc<Shared>,
}

struct Shared {
    config: RenderPoolConfig,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Worker>,
    /// Workers alive, idle or lent out.
    live: usize,
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
                }),
                returned: Condvar::new(),
                config: RenderPoolConfig { workers, ..config },
            }),
        })
    }

    /// The settings the pool runs with (`workers` at least 1).
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
            pages: options.pages.clone(),
            password: options.password.clone(),
            longest_edge: config.longest_edge,
            pixel_budget: config.pixel_budget,
            png_dir,
        };
        let mut stream = PageStream {
            shared: self.shared.clone(),
            worker: Some(self.checkout()?),
            path: path.to_path_buf(),
            page_count: 0,
            pages: Vec::new(),
            next: 0,
            _item: std::marker::PhantomData,
        };
        let sent = {
            let worker = stream.worker.as_mut().expect("just checked out");
            write_frame(&mut worker.stdin, &job, &[])
        };
        if sent.is_err() {
            return Err(stream.worker_lost(None));
        }
        match stream.receive(None)? {
            (Reply::Opened { page_count, pages }, _) => {
                stream.page_count = page_count;
                stream.pages = pages;
                if stream.pages.is_empty() {
                    stream.expect_done()?;
                }
                Ok(stream)
            }
            (Reply::Failed { problem }, _) => {
                stream.finish();
                Err(problem.into_error(stream.path.clone()))
            }
            (other, _) => Err(stream.protocol_error(&other)),
        }
    }

    /// An idle worker, a freshly started one when fewer than `workers` are alive, or the next
    /// one given back.
    fn checkout(&self) -> Result<Worker, RenderError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        loop {
            if let Some(mut worker) = state.idle.pop() {
                if matches!(worker.child.try_wait(), Ok(None)) {
                    return Ok(worker);
                }
                // Died while idle (killed from outside): replace it rather than fail a document.
                state.live -= 1;
                drop(worker);
                continue;
            }
            if state.live < shared.config.workers {
                state.live += 1;
                drop(state);
                let started = Worker::start(&shared.config);
                if started.is_err() {
                    shared.lock().live -= 1;
                    shared.returned.notify_one();
                }
                return started;
            }
            state = shared
                .returned
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, worker: Worker) {
        self.lock().idle.push(worker);
        self.returned.notify_one();
    }

    fn retire(&self, worker: Worker) {
        drop(worker);
        self.lock().live -= 1;
        self.returned.notify_one();
    }
}

/// One worker process. Replies are read by a thread into a channel of capacity one, so the
/// worker renders the next page while the caller handles the current one, yet a caller that
/// stops reading stops the worker instead of filling memory.
struct Worker {
    child: Child,
    stdin: BufWriter<ChildStdin>,
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

    /// Kills the process (if still running) and says how it ended.
    fn kill(&mut self) -> String {
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

mod private {
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

/// The pages of one document, in page order, as the worker renders them. A page-level error
/// is one `Err` item and the stream goes on; when the worker crashes or times out the stream
/// yields that error and ends. Blocking: from async code, iterate it on a blocking thread
/// (e.g. `tokio::task::spawn_blocking`) and forward items into a bounded channel.
///
/// Dropping the stream before its end kills the worker (it is replaced on demand), so
/// abandoning a 500-page document costs no rendering of the rest.
pub struct PageStream<T> {
    shared: Arc<Shared>,
    worker: Option<Worker>,
    path: PathBuf,
    page_count: u32,
    pages: Vec<u32>,
    /// Index into `pages` of the next page expected.
    next: usize,
    _item: std::marker::PhantomData<T>,
}

impl<T> PageStream<T> {
    /// The document, as the caller named it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pages in the document, whatever the selection.
    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// The 1-based pages this stream will yield, in order.
    pub fn pages(&self) -> &[u32] {
        &self.pages
    }

    fn expected_page(&self) -> Option<u32> {
        self.pages.get(self.next).copied()
    }

    fn receive(&mut self, page: Option<u32>) -> Result<(Reply, Vec<u8>), RenderError> {
        let timeout = self.shared.config.page_timeout;
        let worker = self
            .worker
            .as_mut()
            .expect("receive only while a worker is held");
        match worker.replies.recv_timeout(timeout) {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.worker_lost(page))
            }
            Ok(Err(e)) => {
                self.abandon();
                Err(RenderError::Protocol {
                    path: self.path.clone(),
                    reason: format!("unreadable reply: {e}"),
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                self.abandon();
                Err(RenderError::Timeout {
                    path: self.path.clone(),
                    page,
                    timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.worker_lost(page)),
        }
    }

    /// The document is finished and the worker is in a clean state: back to the pool.
    fn finish(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.shared.give_back(worker);
        }
    }

    /// Kills the worker (if still held); the pool starts a replacement on demand.
    fn abandon(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.shared.retire(worker);
        }
    }

    fn worker_lost(&mut self, page: Option<u32>) -> RenderError {
        let status = self
            .worker
            .as_mut()
            .map_or_else(|| "already stopped".to_string(), Worker::kill);
        self.abandon();
        RenderError::WorkerCrashed {
            path: self.path.clone(),
            page,
            status,
        }
    }

    fn protocol_error(&mut self, reply: &Reply) -> RenderError {
        self.abandon();
        RenderError::Protocol {
            path: self.path.clone(),
            reason: format!("unexpected reply {reply:?}"),
        }
    }

    /// After the last page the worker sends `Done` at once; reading it here lets the worker go
    /// back to the pool even when the caller stops iterating after the last page.
    fn expect_done(&mut self) -> Result<(), RenderError> {
        match self.receive(None)? {
            (Reply::Done, _) => {
                self.finish();
                Ok(())
            }
            (other, _) => Err(self.protocol_error(&other)),
        }
    }
}

impl<T: FromReply> Iterator for PageStream<T> {
    type Item = Result<T, RenderError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.worker.as_ref()?;
        let Some(expected) = self.expected_page() else {
            return self.expect_done().err().map(Err);
        };
        let item = match self.receive(Some(expected)) {
            Err(e) => return Some(Err(e)),
            Ok((
                Reply::Page {
                    page,
                    width,
                    height,
                    text,
                    png,
                },
                payload,
            )) if page == expected => T::from_reply(private::PageReply {
                page,
                page_count: self.page_count,
                width,
                height,
                text,
                png,
                payload,
            })
            .ok_or_else(|| RenderError::Protocol {
                path: self.path.clone(),
                reason: format!("page {page}: the reply does not match its header"),
            }),
            Ok((Reply::PageFailed { problem }, _)) => Err(problem.into_error(self.path.clone())),
            Ok((other, _)) => return Some(Err(self.protocol_error(&other))),
        };
        self.next += 1;
        if self.expected_page().is_none() {
            if let Err(e) = self.expect_done() {
                tracing::warn!("{e}");
            }
        }
        Some(item)
    }
}

impl<T> Drop for PageStream<T> {
    fn drop(&mut self) {
        self.abandon();
    }
}
