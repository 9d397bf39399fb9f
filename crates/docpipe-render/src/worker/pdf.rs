//! PDF pages through pdfium, inside a worker process: opening (password, encrypted, not a
//! PDF), sizing each page to the longest edge, refusing pages or embedded images over the pixel
//! budget before pdfium decodes them (decompression bombs), rendering onto white with
//! annotations and form fields, and reading the text layer.

use std::path::Path;

use image::RgbImage;
use pdfium_render::prelude::*;

use super::RgbPage;
use crate::error::Problem;
use crate::pages::fit_longest_edge;

/// Form XObjects nest; pdfium rejects cycles, this bounds pathological depth.
const MAX_FORM_DEPTH: usize = 16;

pub(super) struct PdfSource<'a> {
    document: PdfDocument<'a>,
}

impl<'a> PdfSource<'a> {
    pub(super) fn open(
        pdfium: &'a Pdfium,
        path: &Path,
        password: Option<&str>,
    ) -> Result<Self, Problem> {
        match pdfium.load_pdf_from_file(path, password) {
            Ok(document) => Ok(PdfSource { document }),
            Err(PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::PasswordError)) => {
                Err(match password {
                    None => Problem::Encrypted,
                    Some(_) => Problem::WrongPassword,
                })
            }
            Err(PdfiumError::IoError(e)) => Err(Problem::Io {
                message: format!("cannot read: {e}"),
            }),
            Err(e) => Err(Problem::NotADocument {
                reason: format!("pdfium cannot open it as a PDF ({e:?})"),
            }),
        }
    }

    pub(super) fn page_count(&self) -> u32 {
        u32::try_from(self.document.pages().len()).unwrap_or(0)
    }

    pub(super) fn render(
        &self,
        page: u32,
        longest_edge: u32,
        pixel_budget: u64,
    ) -> Result<RgbPage, Problem> {
        let failed = |reason: String| Problem::Page { page, reason };
        let pdf_page = self
            .document
            .pages()
            .get((page - 1) as PdfPageIndex)
            .map_err(|e| failed(format!("pdfium cannot load the page ({e:?})")))?;
        let (points_w, points_h) = (pdf_page.width().value, pdf_page.height().value);
        if !(points_w.is_finite() && points_h.is_finite() && points_w > 0.0 && points_h > 0.0) {
            return Err(failed(format!(
                "the page has no usable size ({points_w}x{points_h} points)"
            )));
        }
        let (width, height) = fit_longest_edge(points_w as f64, points_h as f64, longest_edge);
        check_budget(
            page,
            "rendered page",
            width as u64,
            height as u64,
            pixel_budget,
        )?;
        check_images(page, pdf_page.objects().iter(), pixel_budget, 0)?;

        let text = pdf_page
            .text()
            .map(|t| t.all())
            .map_err(|e| failed(format!("pdfium cannot read the text layer ({e:?})")))?;
        let config = PdfRenderConfig::new()
            .set_fixed_size(width as Pixels, height as Pixels)
            .set_format(PdfBitmapFormat::BGR)
            .set_clear_color(PdfColor::WHITE)
            .render_annotations(true)
            .render_form_data(true);
        let bitmap = pdf_page
            .render_with_config(&config)
            .map_err(|e| failed(format!("pdfium cannot render the page ({e:?})")))?;
        let image = packed_rgb(&bitmap.as_raw_bytes(), width, height)
            .ok_or_else(|| failed("pdfium returned a bitmap of the wrong size".into()))?;
        Ok(RgbPage { image, text })
    }
}

fn check_budget(
    page: u32,
    what: &str,
    width: u64,
    height: u64,
    budget: u64,
) -> Result<(), Problem> {
    if width.saturating_mul(height) > budget {
        return Err(Problem::PageTooLarge {
            page,
            what: what.into(),
            width,
            height,
            budget,
        });
    }
    Ok(())
}

/// Refuses pages carrying an image larger than the pixel budget before pdfium decodes it:
/// a small page can hold a decompression bomb that pdfium would inflate at render time.
fn check_images<'a>(
    page: u32,
    objects: impl Iterator<Item = PdfPageObject<'a>>,
    budget: u64,
    depth: usize,
) -> Result<(), Problem> {
    for object in objects {
        if let Some(image) = object.as_image_object() {
            let width = image.width().unwrap_or(0) as u64;
            let height = image.height().unwrap_or(0) as u64;
            check_budget(page, "embedded image", width, height, budget)?;
        } else if let Some(form) = object.as_x_object_form_object() {
            if depth >= MAX_FORM_DEPTH {
                return Err(Problem::Page {
                    page,
                    reason: format!("form XObjects nested deeper than {MAX_FORM_DEPTH}"),
                });
            }
            check_images(page, form.iter(), budget, depth + 1)?;
        }
    }
    Ok(())
}

/// pdfium's 24-bit rows are padded to 4 bytes; `FPDF_REVERSE_BYTE_ORDER` (set by
/// pdfium-render) already made them RGB.
fn packed_rgb(buffer: &[u8], width: u32, height: u32) -> Option<RgbImage> {
    let row = width as usize * 3;
    let stride = buffer.len().checked_div(height as usize)?;
    if stride < row {
        return None;
    }
    let mut pixels = Vec::with_capacity(row * height as usize);
    for line in buffer.chunks_exact(stride) {
        pixels.extend_from_slice(&line[..row]);
    }
    RgbImage::from_raw(width, height, pixels)
}
