//! The worker process: one pdfium, one open document at a time, driven over stdin/stdout by the
//! pool, which may have other workers render other ranges of the same document meanwhile.
//! Everything that parses untrusted bytes (pdfium, image decoders) runs here, so a crash or a
//! hang costs a process the pool replaces, never the caller.

#[cfg(feature = "fault-injection")]
mod fault;
mod pdf;
mod raster;

use std::io::{self, BufReader, BufWriter, Read, Write};

use image::RgbImage;
use pdfium_render::prelude::Pdfium;

use crate::error::Problem;
use crate::library;
use crate::protocol::{read_frame, write_frame, Job, Reply, Request};

#[cfg(feature = "fault-injection")]
pub use fault::FAULT_ENV;

/// Serves jobs from stdin until it is closed. Returns an error only when the pool side of the
/// pipe is unusable; problems with documents are reported to the pool instead.
pub fn run_stdio() -> io::Result<()> {
    serve(
        BufReader::new(io::stdin().lock()),
        BufWriter::new(io::stdout().lock()),
    )
}

fn serve(mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    let pdfium = match library::bind() {
        Ok(pdfium) => pdfium,
        Err(message) => {
            let problem = Problem::LibraryNotFound { message };
            return write_frame(&mut output, &Reply::Failed { problem }, &[]);
        }
    };
    write_frame(&mut output, &Reply::Ready, &[])?;
    // The document stays open between requests: a range costs no re-parse of the file.
    let mut open_document: Option<(Job, Document)> = None;
    while let Some((request, _)) = read_frame::<Request>(&mut input, 0)? {
        let (job, pages) = match request {
            Request::Open {
                job,
                selection,
                first,
            } => {
                open_document = None;
                let document = match open(&pdfium, &job) {
                    Ok(document) => document,
                    Err(problem) => {
                        write_frame(&mut output, &Reply::Failed { problem }, &[])?;
                        continue;
                    }
                };
                let page_count = document.page_count();
                let pages = match &selection {
                    Some(selection) => selection.pages(page_count),
                    None => (1..=page_count).collect(),
                };
                let first = pages[..first.min(pages.len())].to_vec();
                write_frame(&mut output, &Reply::Opened { page_count, pages }, &[])?;
                open_document = Some((job.clone(), document));
                (job, first)
            }
            Request::Render { job, pages, reopen } => {
                if reopen {
                    open_document = None;
                    match open(&pdfium, &job) {
                        Ok(document) => open_document = Some((job.clone(), document)),
                        Err(problem) => {
                            write_frame(&mut output, &Reply::Failed { problem }, &[])?;
                            continue;
                        }
                    }
                }
                (job, pages)
            }
        };
        match &mut open_document {
            Some((open_job, document)) if *open_job == job => {
                render_pages(document, &job, &pages, &mut output)?
            }
            _ => {
                let problem = Problem::Io {
                    message: "asked to render a document that is not open".into(),
                };
                write_frame(&mut output, &Reply::Failed { problem }, &[])?
            }
        }
    }
    Ok(())
}

/// A page as the decoders produce it, before it is sent or saved.
#[derive(Debug)]
pub(crate) struct RgbPage {
    pub image: RgbImage,
    pub text: String,
}

/// An open document of either kind.
enum Document<'a> {
    Pdf(pdf::PdfSource<'a>),
    Raster(raster::RasterSource),
}

impl Document<'_> {
    fn page_count(&self) -> u32 {
        match self {
            Document::Pdf(doc) => doc.page_count(),
            Document::Raster(doc) => doc.page_count(),
        }
    }

    fn render(&mut self, page: u32, job: &Job) -> Result<RgbPage, Problem> {
        match self {
            Document::Pdf(doc) => doc.render(page, job.longest_edge, job.pixel_budget),
            Document::Raster(doc) => doc.render(page, job.longest_edge, job.pixel_budget),
        }
    }
}

fn open<'a>(pdfium: &'a Pdfium, job: &Job) -> Result<Document<'a>, Problem> {
    let mut head = Vec::with_capacity(1024);
    std::fs::File::open(&job.path)
        .and_then(|f| f.take(1024).read_to_end(&mut head))
        .map_err(|e| Problem::Io {
            message: format!("cannot read: {e}"),
        })?;
    if head.is_empty() {
        return Err(Problem::NotADocument {
            reason: "the file is empty".into(),
        });
    }
    if head.windows(5).any(|w| w == b"%PDF-") {
        return pdf::PdfSource::open(pdfium, &job.path, job.password.as_deref()).map(Document::Pdf);
    }
    match image::guess_format(&head) {
        Ok(format) => {
            raster::RasterSource::open(&job.path, format, job.pixel_budget).map(Document::Raster)
        }
        Err(_) => Err(Problem::NotADocument {
            reason: "not a PDF, PNG, JPEG or TIFF file".into(),
        }),
    }
}

fn render_pages(
    document: &mut Document,
    job: &Job,
    pages: &[u32],
    output: &mut impl Write,
) -> io::Result<()> {
    for &page in pages {
        #[cfg(feature = "fault-injection")]
        fault::before_page(&job.path, page);
        match document
            .render(page, job)
            .and_then(|p| deliver(page, p, job))
        {
            Ok((reply, payload)) => write_frame(output, &reply, &payload)?,
            Err(problem) => write_frame(output, &Reply::PageFailed { problem }, &[])?,
        }
    }
    write_frame(output, &Reply::Done, &[])
}

/// The reply for a rendered page: its pixels as payload, or the PNG written for it.
fn deliver(page: u32, rendered: RgbPage, job: &Job) -> Result<(Reply, Vec<u8>), Problem> {
    let (width, height) = rendered.image.dimensions();
    let png = match &job.png_dir {
        Some(dir) => {
            let path = dir.join(crate::page::png_file_name(page));
            std::fs::create_dir_all(dir)
                .and_then(|()| crate::page::write_png(&rendered.image, &path))
                .map_err(|e| Problem::Io {
                    message: format!("page {page}: cannot write {}: {e}", path.display()),
                })?;
            Some(path)
        }
        None => None,
    };
    let payload = match png {
        Some(_) => Vec::new(),
        None => rendered.image.into_raw(),
    };
    let reply = Reply::Page {
        page,
        width,
        height,
        text: rendered.text,
        png,
    };
    Ok((reply, payload))
}
