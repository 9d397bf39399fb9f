//! Images as the processors see them: decoding and RGB conversion as PIL does it, and the
//! rescale + normalize step to channel-first f32 pixels (spec A.2, A.5; G.2 for Idefics3).

use std::path::Path;

use image::{DynamicImage, RgbImage, RgbaImage};

use crate::config::Normalization;
use crate::error::ImageLoadError;

/// One preprocessed image (a crop or a whole image): normalized f32 pixels, channel-first.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `3 × height × width`, channel-major.
    pub data: Vec<f32>,
}

/// Decodes an image file and converts it to RGB the way the PIL path does.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageLoadError> {
    let fail = |message: String| ImageLoadError {
        path: path.to_path_buf(),
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| fail(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    let decoded = reader
        .decode()
        .map_err(|e| fail(format!("cannot decode image: {e}")))?;
    Ok(to_rgb(decoded))
}

/// PIL's `convert_to_rgb`: RGB stays as it is; anything else becomes RGBA and is
/// alpha-composited onto opaque white, so transparent pixels turn white.
pub fn to_rgb(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLuma16(_) => image.to_rgb8(),
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgb32F(_) => image.to_rgb8(),
        other => composite_on_white(&other.to_rgba8()),
    }
}

/// Pillow's `ImagingAlphaComposite` with an opaque white destination, in its 7-bit fixed
/// point so that semi-transparent pixels round exactly as Pillow rounds them.
fn composite_on_white(rgba: &RgbaImage) -> RgbImage {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |a: u32| ((a >> 8) + a) >> 8;
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        if a == 0 {
            return image::Rgb([255, 255, 255]);
        }
        let src_a = a as u32;
        let blend = 255 * (255 - src_a);
        let outa255 = src_a * 255 + blend;
        let coef1 = src_a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        let mix = |c: u8| {
            let tmp = c as u32 * coef1 + 255 * coef2;
            (shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
        };
        image::Rgb([mix(r), mix(g), mix(b)])
    })
}

/// Rescale and normalize as a table: every u8 level's normalized value per channel,
/// `f32((f32(f64(u)·rescale) − mean) / std)`, numpy's dtype order (rescale in float64, cast,
/// normalize in float32).
#[derive(Debug, Clone)]
pub struct Normalizer {
    lut: [[f32; 256]; 3],
}

impl Normalizer {
    /// The table of a processor's settings.
    pub fn new(config: &Normalization) -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (u, slot) in table.iter_mut().enumerate() {
                let mut x = if config.do_rescale {
                    (u as f64 * config.rescale_factor) as f32
                } else {
                    u as f32
                };
                if config.do_normalize {
                    x = (x - config.image_mean[c]) / config.image_std[c];
                }
                *slot = x;
            }
        }
        Normalizer { lut }
    }

    /// The normalized channel-first pixels of an RGB image.
    pub fn apply(&self, image: &RgbImage) -> ProcessedImage {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let plane = w * h;
        let mut data = vec![0f32; 3 * plane];
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = self.lut[c][px.0[c] as usize];
            }
        }
        ProcessedImage {
            height: h,
            width: w,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table_follows_numpy_dtype_order() {
        let processor = Normalizer::new(&Normalization {
            do_rescale: true,
            rescale_factor: 0.00392156862745098,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        });
        for u in 0..=255u32 {
            let x = (u as f64 * 0.00392156862745098) as f32;
            assert_eq!(x, u as f32 / 255.0, "rescale of {u}");
            let y = (x - 0.5f32) / 0.5f32;
            assert_eq!(processor.lut[0][u as usize], y);
            assert!((-1.0..=1.0).contains(&y) && y != 0.0);
        }
        assert_eq!(processor.lut[1][0], -1.0);
        assert_eq!(processor.lut[2][255], 1.0);
    }

    #[test]
    fn alpha_composite_matches_pillow_rounding() {
        let rgba = RgbaImage::from_fn(4, 1, |x, _| match x {
            0 => image::Rgba([10, 20, 30, 0]),
            1 => image::Rgba([10, 20, 30, 255]),
            2 => image::Rgba([0, 100, 200, 128]),
            _ => image::Rgba([255, 0, 0, 1]),
        });
        let rgb = composite_on_white(&rgba);
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        // Pillow: Image.alpha_composite(white, (0,100,200,128)) == (127, 177, 227).
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 177, 227]);
        assert_eq!(rgb.get_pixel(3, 0).0, [255, 254, 254]);
    }
}
