//! [`RenderError`]: why a document or page could not be rendered, naming the file; and the
//! worker-side `Problem` the pool turns into one by adding the file name. The pipeline sees
//! these as `Failure`s of stage `render` ([`RenderError::to_failure`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a document or one of its pages could not be rendered. Every variant names the file, so
/// a message printed on its own tells the user which input to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No usable pdfium library: nothing can be rendered until the set-up is fixed.
    #[error("pdfium library not found: {message}")]
    LibraryNotFound {
        /// Where the library was looked for and how to install it.
        message: String,
    },
    /// The worker process could not be started or did not answer its start-up handshake.
    #[error("render worker {command}: {reason}")]
    WorkerStart {
        /// The worker's program and arguments.
        command: String,
        /// What failed: spawning the process, or its handshake (e.g. an unexpected reply).
        reason: String,
    },
    /// The file is not a document we can read (empty, not a PDF or image, damaged).
    #[error("{}: not a readable document: {reason}", path.display())]
    NotADocument {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
        /// pdfium's or the image decoder's complaint.
        reason: String,
    },
    /// The PDF is encrypted and no password was given.
    #[error("{}: the PDF is encrypted; give its password (--password)", path.display())]
    Encrypted {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
    },
    /// The PDF is encrypted and the given password does not open it.
    #[error("{}: wrong password for the encrypted PDF", path.display())]
    WrongPassword {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
    },
    /// The page (or an image on it) is larger than the pixel budget; nothing was allocated.
    #[error(
        "{} page {page}: {what} of {width}x{height} pixels exceeds the pixel budget of {budget}",
        path.display()
    )]
    PageTooLarge {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
        /// 1-based page (frame of a TIFF; 1 for a single image).
        page: u32,
        /// What is too large: `rendered page`, `embedded image` or `image`.
        what: String,
        /// Its declared width in pixels (after scaling, for a rendered page).
        width: u64,
        /// Its declared height in pixels (after scaling, for a rendered page).
        height: u64,
        /// [`crate::RenderPoolConfig::pixel_budget`], in pixels.
        budget: u64,
    },
    /// pdfium or the image decoder failed on this page; the other pages are unaffected.
    #[error("{} page {page}: {reason}", path.display())]
    Page {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
        /// 1-based page that failed.
        page: u32,
        /// pdfium's or the decoder's message.
        reason: String,
    },
    /// The worker died while rendering this document; the rest of the document is not rendered.
    #[error("{}{}: render worker crashed ({status})", path.display(), on_page(*page))]
    WorkerCrashed {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
        /// The page being rendered; `None` when the worker died while opening the document.
        page: Option<u32>,
        /// How the process ended, e.g. `exit status: 1` or `signal: 11 (SIGSEGV)`.
        status: String,
    },
    /// The worker took longer than the per-page timeout and was killed.
    #[error("{}{}: render timed out after {:.1}s; the worker was killed", path.display(), on_page(*page), timeout.as_secs_f64())]
    Timeout {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
        /// The page being rendered; `None` when opening the document timed out.
        page: Option<u32>,
        /// [`crate::RenderPoolConfig::page_timeout`].
        timeout: Duration,
    },
    /// Reading the document or writing a page failed.
    #[error("{}: {message}", path.display())]
    Io {
        /// The document's local file, as passed to the pool (a failed PNG write names the page
        /// file in `message`).
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The worker sent something that does not follow the protocol (a version mismatch or a bug).
    #[error("{}: render worker protocol error: {reason}", path.display())]
    Protocol {
        /// The document's local file, as passed to the pool.
        path: PathBuf,
        /// The unreadable or unexpected reply.
        reason: String,
    },
}

fn on_page(page: Option<u32>) -> String {
    page.map(|p| format!(" page {p}")).unwrap_or_default()
}

impl RenderError {
    /// The document this error is about, when it concerns one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            RenderError::LibraryNotFound { .. } | RenderError::WorkerStart { .. } => None,
            RenderError::NotADocument { path, .. }
            | RenderError::Encrypted { path }
            | RenderError::WrongPassword { path }
            | RenderError::PageTooLarge { path, .. }
            | RenderError::Page { path, .. }
            | RenderError::WorkerCrashed { path, .. }
            | RenderError::Timeout { path, .. }
            | RenderError::Io { path, .. }
            | RenderError::Protocol { path, .. } => Some(path),
        }
    }

    /// The 1-based page this error concerns, when it concerns one page only.
    pub fn page(&self) -> Option<u32> {
        match self {
            RenderError::PageTooLarge { page, .. } | RenderError::Page { page, .. } => Some(*page),
            RenderError::WorkerCrashed { page, .. } | RenderError::Timeout { page, .. } => *page,
            _ => None,
        }
    }

    /// Turns the error into the pipeline's boundary type, attributed to the render stage.
    pub fn to_failure(&self, doc_uri: &str) -> docpipe_core::Failure {
        let failure =
            docpipe_core::Failure::new(docpipe_core::Stage::Render, doc_uri, self.to_string());
        match self.page() {
            Some(page) => failure.on_page(page),
            None => failure,
        }
    }
}

/// What a worker reports went wrong; the pool adds the file name to make a [`RenderError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Problem {
    LibraryNotFound {
        message: String,
    },
    NotADocument {
        reason: String,
    },
    Encrypted,
    WrongPassword,
    PageTooLarge {
        page: u32,
        what: String,
        width: u64,
        height: u64,
        budget: u64,
    },
    Page {
        page: u32,
        reason: String,
    },
    Io {
        message: String,
    },
}

impl Problem {
    pub(crate) fn into_error(self, path: PathBuf) -> RenderError {
        match self {
            Problem::LibraryNotFound { message } => RenderError::LibraryNotFound { message },
            Problem::NotADocument { reason } => RenderError::NotADocument { path, reason },
            Problem::Encrypted => RenderError::Encrypted { path },
            Problem::WrongPassword => RenderError::WrongPassword { path },
            Problem::PageTooLarge {
                page,
                what,
                width,
                height,
                budget,
            } => RenderError::PageTooLarge {
                path,
                page,
                what,
                width,
                height,
                budget,
            },
            Problem::Page { page, reason } => RenderError::Page { path, page, reason },
            Problem::Io { message } => RenderError::Io { path, message },
        }
    }
}
