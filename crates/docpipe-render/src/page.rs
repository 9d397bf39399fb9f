//! Rendered pages as the pool hands them out: [`RenderedPage`] (pixels and text layer, for
//! the pipeline) and [`SavedPage`] (a PNG the worker wrote itself, for `docpipe render`), plus
//! the page file names and the fast PNG encoding both paths use.

use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use docpipe_core::{DocumentRef, PageImage};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};

/// A rendered page with its pixels, as [`crate::RenderPool::render`] streams it.
#[derive(Debug, Clone)]
pub struct RenderedPage {
    /// 1-based page number.
    pub page: u32,
    /// Pages (TIFF frames) in the document, whatever [`crate::DocumentOptions::pages`] selected.
    pub page_count: u32,
    /// The page scaled so that its longest edge is [`crate::RenderPoolConfig::longest_edge`]
    /// pixels.
    pub image: RgbImage,
    /// pdfium's text layer of the page; empty for raster documents.
    pub text: String,
}

impl RenderedPage {
    /// The pipeline's page type; moves the pixels, copies nothing.
    pub fn into_page_image(self, doc: Arc<DocumentRef>) -> PageImage {
        PageImage {
            doc,
            page: self.page,
            page_count: self.page_count,
            image: Arc::new(self.image),
            text: self.text,
        }
    }
}

/// A page the worker wrote as a PNG file, as [`crate::RenderPool::render_to_png`] streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedPage {
    /// 1-based page number.
    pub page: u32,
    /// Pages (TIFF frames) in the document, whatever [`crate::DocumentOptions::pages`] selected.
    pub page_count: u32,
    /// Width of the written image in pixels.
    pub width: u32,
    /// Height of the written image in pixels.
    pub height: u32,
    /// The PNG file: `dir/page-NNNN.png` in the folder given to
    /// [`crate::RenderPool::render_to_png`] (see [`png_file_name`]).
    pub path: PathBuf,
    /// pdfium's text layer of the page; empty for raster documents.
    pub text: String,
}

/// `page-0001.png` for page 1: names sort in page order up to page 9999.
pub fn png_file_name(page: u32) -> String {
    format!("page-{page:04}.png")
}

/// Writes an RGB PNG with the fastest deflate setting: for rendered pages (mostly flat areas)
/// it is many times faster than the default level and the files are only slightly larger.
pub fn write_png(image: &RgbImage, path: &Path) -> io::Result<()> {
    let file = BufWriter::new(std::fs::File::create(path)?);
    PngEncoder::new_with_quality(file, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(io::Error::other)
}
