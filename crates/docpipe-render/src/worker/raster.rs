//! PNG, JPEG and TIFF inputs (one page per TIFF frame), inside a worker process: decoding
//! under allocation limits derived from the pixel budget, compositing transparency onto white
//! (like a PDF page's background) and resizing to the longest edge. Raster pages have no text
//! layer.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use fast_image_resize::images::Image as ResizeImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageBuffer, ImageFormat, ImageReader, Limits, RgbImage};
use tiff::decoder::{Decoder as TiffDecoder, DecodingResult};
use tiff::ColorType;

use super::RgbPage;
use crate::error::Problem;
use crate::pages::fit_longest_edge;

/// A multi-page TIFF with more frames than this is treated as damaged.
const MAX_TIFF_FRAMES: u32 = 100_000;

/// A PNG, JPEG or TIFF file; TIFF frames are pages.
pub(crate) struct RasterSource {
    path: PathBuf,
    format: ImageFormat,
    page_count: u32,
}

impl RasterSource {
    pub(crate) fn open(path: &Path, format: ImageFormat, budget: u64) -> Result<Self, Problem> {
        let page_count = match format {
            ImageFormat::Tiff => count_tiff_frames(path, budget)?,
            ImageFormat::Png | ImageFormat::Jpeg => 1,
            other => {
                return Err(Problem::NotADocument {
                    reason: format!("{other:?} images are not supported (PNG, JPEG, TIFF are)"),
                })
            }
        };
        Ok(RasterSource {
            path: path.to_path_buf(),
            format,
            page_count,
        })
    }

    pub(crate) fn page_count(&self) -> u32 {
        self.page_count
    }

    pub(crate) fn render(
        &self,
        page: u32,
        longest_edge: u32,
        budget: u64,
    ) -> Result<RgbPage, Problem> {
        let decoded = match self.format {
            ImageFormat::Tiff => decode_tiff_frame(&self.path, page, budget),
            _ => decode_single(&self.path, self.format, budget),
        }?;
        let (width, height) = fit_longest_edge(
            decoded.width() as f64,
            decoded.height() as f64,
            longest_edge,
        );
        check_budget(page, "rendered page", width, height, budget)?;
        let image = resize(on_white(decoded), width, height)
            .map_err(|reason| Problem::Page { page, reason })?;
        Ok(RgbPage {
            image,
            text: String::new(),
        })
    }
}

fn check_budget(
    page: u32,
    what: &str,
    width: u32,
    height: u32,
    budget: u64,
) -> Result<(), Problem> {
    if width as u64 * height as u64 > budget {
        return Err(Problem::PageTooLarge {
            page,
            what: what.into(),
            width: width as u64,
            height: height as u64,
            budget,
        });
    }
    Ok(())
}

fn unreadable(page: u32, error: impl std::fmt::Display) -> Problem {
    Problem::Page {
        page,
        reason: format!("cannot decode the image: {error}"),
    }
}

/// Decoder limits that make any allocation beyond the budget an error rather than an attempt.
fn image_limits(budget: u64) -> Limits {
    let side = u32::try_from(budget).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    // Decoding may hold 16-bit RGBA (8 bytes a pixel) of the source plus the converted copy.
    limits.max_alloc = Some(budget.saturating_mul(16));
    limits
}

fn decode_single(path: &Path, format: ImageFormat, budget: u64) -> Result<DynamicImage, Problem> {
    let open = || -> Result<ImageReader<BufReader<File>>, Problem> {
        let mut reader = ImageReader::open(path).map_err(|e| Problem::Io {
            message: format!("cannot read: {e}"),
        })?;
        reader.set_format(format);
        reader.limits(image_limits(budget));
        Ok(reader)
    };
    let (width, height) = open()?.into_dimensions().map_err(|e| unreadable(1, e))?;
    check_budget(1, "image", width, height, budget)?;
    open()?.decode().map_err(|e| unreadable(1, e))
}

fn tiff_decoder(path: &Path, budget: u64) -> Result<TiffDecoder<BufReader<File>>, Problem> {
    let file = File::open(path).map_err(|e| Problem::Io {
        message: format!("cannot read: {e}"),
    })?;
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size = usize::try_from(budget.saturating_mul(8)).unwrap_or(usize::MAX);
    TiffDecoder::new(BufReader::new(file))
        .map(|d| d.with_limits(limits))
        .map_err(|e| Problem::NotADocument {
            reason: format!("not a readable TIFF: {e}"),
        })
}

fn count_tiff_frames(path: &Path, budget: u64) -> Result<u32, Problem> {
    let mut decoder = tiff_decoder(path, budget)?;
    let mut frames = 1;
    while decoder.more_images() {
        decoder.next_image().map_err(|e| Problem::NotADocument {
            reason: format!("damaged TIFF after frame {frames}: {e}"),
        })?;
        frames += 1;
        if frames > MAX_TIFF_FRAMES {
            return Err(Problem::NotADocument {
                reason: format!("more than {MAX_TIFF_FRAMES} TIFF frames"),
            });
        }
    }
    Ok(frames)
}

fn decode_tiff_frame(path: &Path, page: u32, budget: u64) -> Result<DynamicImage, Problem> {
    let mut decoder = tiff_decoder(path, budget)?;
    decoder
        .seek_to_image(page as usize - 1)
        .map_err(|e| unreadable(page, e))?;
    let (width, height) = decoder.dimensions().map_err(|e| unreadable(page, e))?;
    check_budget(page, "image", width, height, budget)?;
    let color = decoder.colortype().map_err(|e| unreadable(page, e))?;
    let data = decoder.read_image().map_err(|e| unreadable(page, e))?;
    tiff_to_image(width, height, color, data).ok_or_else(|| Problem::Page {
        page,
        reason: format!("unsupported TIFF pixel format {color:?}"),
    })
}

fn tiff_to_image(
    width: u32,
    height: u32,
    color: ColorType,
    data: DecodingResult,
) -> Option<DynamicImage> {
    fn buffer<P: image::Pixel>(
        width: u32,
        height: u32,
        data: Vec<P::Subpixel>,
    ) -> Option<ImageBuffer<P, Vec<P::Subpixel>>> {
        ImageBuffer::from_raw(width, height, data)
    }
    Some(match (color, data) {
        (ColorType::Gray(8), DecodingResult::U8(d)) => {
            DynamicImage::ImageLuma8(buffer(width, height, d)?)
        }
        (ColorType::Gray(16), DecodingResult::U16(d)) => {
            DynamicImage::ImageLuma16(buffer(width, height, d)?)
        }
        (ColorType::GrayA(8), DecodingResult::U8(d)) => {
            DynamicImage::ImageLumaA8(buffer(width, height, d)?)
        }
        (ColorType::GrayA(16), DecodingResult::U16(d)) => {
            DynamicImage::ImageLumaA16(buffer(width, height, d)?)
        }
        (ColorType::RGB(8), DecodingResult::U8(d)) => {
            DynamicImage::ImageRgb8(buffer(width, height, d)?)
        }
        (ColorType::RGB(16), DecodingResult::U16(d)) => {
            DynamicImage::ImageRgb16(buffer(width, height, d)?)
        }
        (ColorType::RGBA(8), DecodingResult::U8(d)) => {
            DynamicImage::ImageRgba8(buffer(width, height, d)?)
        }
        (ColorType::RGBA(16), DecodingResult::U16(d)) => {
            DynamicImage::ImageRgba16(buffer(width, height, d)?)
        }
        _ => return None,
    })
}

/// Transparent pixels become white, like the page background of a PDF.
fn on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for p in rgba.pixels() {
        let alpha = p[3] as u32;
        for c in &p.0[..3] {
            pixels.push(((*c as u32 * alpha + 255 * (255 - alpha) + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(width, height, pixels).expect("buffer sized from the image")
}

fn resize(image: RgbImage, width: u32, height: u32) -> Result<RgbImage, String> {
    if image.dimensions() == (width, height) {
        return Ok(image);
    }
    let (src_w, src_h) = image.dimensions();
    let source = ResizeImage::from_vec_u8(src_w, src_h, image.into_raw(), PixelType::U8x3)
        .map_err(|e| format!("cannot resize: {e}"))?;
    let mut target = ResizeImage::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    Resizer::new()
        .resize(&source, &mut target, &options)
        .map_err(|e| format!("cannot resize: {e}"))?;
    RgbImage::from_raw(width, height, target.into_vec())
        .ok_or_else(|| "resized buffer has the wrong size".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba, RgbaImage};

    #[test]
    fn transparent_pixels_become_white() {
        let mut rgba = RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
        let rgb = on_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(rgb.get_pixel(1, 0), &Rgb([10, 20, 30]));
    }

    #[test]
    fn scales_to_the_longest_edge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        RgbImage::from_pixel(400, 100, Rgb([200, 10, 10]))
            .save(&path)
            .unwrap();
        let source = RasterSource::open(&path, ImageFormat::Png, 1 << 20).unwrap();
        let page = source.render(1, 980, 1 << 20).unwrap();
        assert_eq!(page.image.dimensions(), (980, 245));
        assert_eq!(page.image.get_pixel(490, 120), &Rgb([200, 10, 10]));
    }

    #[test]
    fn refuses_oversized_images_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        RgbImage::new(300, 200).save(&path).unwrap();
        let source = RasterSource::open(&path, ImageFormat::Png, 50_000).unwrap();
        let problem = source.render(1, 100, 50_000).unwrap_err();
        assert!(matches!(
            problem,
            Problem::PageTooLarge {
                width: 300,
                height: 200,
                budget: 50_000,
                ..
            }
        ));
    }

    #[test]
    fn tiff_frames_are_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.tif");
        let mut encoder = tiff::encoder::TiffEncoder::new(File::create(&path).unwrap()).unwrap();
        encoder
            .write_image::<tiff::encoder::colortype::RGB8>(4, 2, &[0u8; 4 * 2 * 3])
            .unwrap();
        encoder
            .write_image::<tiff::encoder::colortype::Gray8>(2, 4, &[255u8; 2 * 4])
            .unwrap();
        let source = RasterSource::open(&path, ImageFormat::Tiff, 1 << 20).unwrap();
        assert_eq!(source.page_count(), 2);
        let first = source.render(1, 8, 1 << 20).unwrap().image;
        let second = source.render(2, 8, 1 << 20).unwrap().image;
        assert_eq!(
            (first.dimensions(), first.get_pixel(3, 1)),
            ((8, 4), &Rgb([0, 0, 0]))
        );
        assert_eq!(
            (second.dimensions(), second.get_pixel(1, 3)),
            ((4, 8), &Rgb([255, 255, 255]))
        );
    }
}
