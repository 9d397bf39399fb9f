//! The render stage: PDF pages and raster images (PNG, JPEG, multi-page TIFF) to RGB pages whose
//! longest edge is a fixed number of pixels, with pdfium's text layer.
//!
//! pdfium is not thread-safe and hostile files can crash or hang it, so all decoding happens in
//! worker processes (the `docpipe` binary in its hidden `render-worker` mode, which calls
//! [`worker::run_stdio`]). A [`RenderPool`] owns the workers; each document borrows one for as
//! long as its [`PageStream`] lives, and idle ones for further ranges of its pages, so one large
//! document is rendered by every worker at once. A worker that crashes or exceeds the per-page
//! timeout is killed and replaced, and only the pages of its range get the error.
//!
//! ```no_run
//! use docpipe_render::{DocumentOptions, RenderPool, RenderPoolConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = RenderPool::new(RenderPoolConfig { workers: 4, ..RenderPoolConfig::new()? })?;
//! let pages = pool.render("report.pdf".as_ref(), &DocumentOptions::default())?;
//! println!("{} pages", pages.page_count());
//! for page in pages {
//!     match page {
//!         Ok(page) => println!("page {}: {:?}", page.page, page.image.dimensions()),
//!         Err(error) => eprintln!("{error}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Memory stays bounded: each worker a stream holds sends at most a page or two ahead of the
//! one being handled, and pages (or images inside PDF pages, or raster inputs) larger than the pixel budget
//! are refused from their declared size, before any pixel is allocated.
//!
//! The pdfium library is looked up as [`library::locate`] describes.

#![warn(missing_docs)]

mod error;
pub mod library;
mod page;
mod pages;
mod pool;
mod protocol;
mod stream;
pub mod worker;

pub use error::RenderError;
pub use page::{png_file_name, write_png, RenderedPage, SavedPage};
pub use pages::{fit_longest_edge, PageSelection, PageSelectionError};
pub use pool::{DocumentOptions, FromReply, RenderPool, RenderPoolConfig, WorkerCommand};
pub use stream::PageStream;
