//! Image preprocessing as `Idefics2ImageProcessor` (the slow PIL path) does it (spec A): RGB
//! conversion, optional splitting into four quadrants plus the whole image, the
//! shortest/longest-edge resize rule, Pillow's convolution resampling
//! (`docpipe_vlm::resample`), rescale and normalize, and padding to the batch maximum with a
//! pixel attention mask.

use docpipe_vlm::image::{Normalizer, ProcessedImage};
use docpipe_vlm::resample::resize;
use docpipe_vlm::ImageError;
use image::RgbImage;

use crate::config::ProcessorConfig;

/// Images padded to a common size, as the transformers processor hands them to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedImages {
    /// Images.
    pub count: usize,
    /// The largest height.
    pub height: usize,
    /// The largest width.
    pub width: usize,
    /// `count × 3 × height × width`; padding is 0.0 at the bottom and right.
    pub pixel_values: Vec<f32>,
    /// `count × height × width`; true where the pixel belongs to the image.
    pub pixel_attention_mask: Vec<bool>,
}

/// The output size of `get_resize_output_image_size` for an `height × width` input, evaluated
/// in f64 in transformers' exact order. Only images whose long side exceeds `longest` shrink;
/// each side below `shortest` is then stretched on its own.
pub fn resize_output_size(
    height: usize,
    width: usize,
    shortest: usize,
    longest: usize,
) -> (usize, usize) {
    let (mut h, mut w) = (height, width);
    let aspect = width as f64 / height as f64;
    if w >= h && w > longest {
        w = longest;
        h = (longest as f64 / aspect) as usize;
    } else if h > w && h > longest {
        h = longest;
        w = (longest as f64 * aspect) as usize;
    }
    (h.max(shortest), w.max(shortest))
}

/// The quadrants (top-left, top-right, bottom-left, bottom-right) and then the whole image.
fn split(image: &RgbImage) -> Vec<RgbImage> {
    let (w, h) = image.dimensions();
    let (mid_w, mid_h) = (w / 2, h / 2);
    let crop = |x: u32, y: u32, cw: u32, ch: u32| {
        image::imageops::crop_imm(image, x, y, cw, ch).to_image()
    };
    vec![
        crop(0, 0, mid_w, mid_h),
        crop(mid_w, 0, w - mid_w, mid_h),
        crop(0, mid_h, mid_w, h - mid_h),
        crop(mid_w, mid_h, w - mid_w, h - mid_h),
        image.clone(),
    ]
}

/// Turns RGB images into model inputs according to a checkpoint's processor settings.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: ProcessorConfig,
    normalizer: Normalizer,
}

impl ImageProcessor {
    /// The processor of a checkpoint's settings.
    pub fn new(config: ProcessorConfig) -> Self {
        let normalizer = Normalizer::new(&config.normalization);
        ImageProcessor { config, normalizer }
    }

    /// Its settings.
    pub fn config(&self) -> &ProcessorConfig {
        &self.config
    }

    /// How many model images (crops included) one input image becomes.
    pub fn images_per_input(&self) -> usize {
        if self.config.do_image_splitting {
            5
        } else {
            1
        }
    }

    /// Preprocesses one input image into its crops (or itself), in the order the prompt's
    /// `<image>` blocks expect them.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<ProcessedImage>, ImageError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(ImageError::Empty);
        }
        let parts = if self.config.do_image_splitting {
            split(image)
        } else {
            vec![image.clone()]
        };
        parts
            .iter()
            .map(|part| {
                if part.width() == 0 || part.height() == 0 {
                    return Err(ImageError::TooSmallToSplit {
                        width: image.width(),
                        height: image.height(),
                    });
                }
                let resized = if self.config.do_resize {
                    let (h, w) = resize_output_size(
                        part.height() as usize,
                        part.width() as usize,
                        self.config.size.shortest_edge,
                        self.config.size.longest_edge,
                    );
                    resize(part, w as u32, h as u32, self.config.resample)
                } else {
                    part.clone()
                };
                Ok(self.normalizer.apply(&resized))
            })
            .collect()
    }
}

/// Pads images at the bottom and right to the largest height and width among them.
pub fn pad_images(images: &[&ProcessedImage]) -> PaddedImages {
    let height = images.iter().map(|i| i.height).max().unwrap_or(0);
    let width = images.iter().map(|i| i.width).max().unwrap_or(0);
    let plane = height * width;
    let mut pixel_values = vec![0f32; images.len() * 3 * plane];
    let mut pixel_attention_mask = vec![false; images.len() * plane];
    for (n, img) in images.iter().enumerate() {
        for c in 0..3 {
            for y in 0..img.height {
                let src = &img.data[(c * img.height + y) * img.width..][..img.width];
                pixel_values[((n * 3 + c) * height + y) * width..][..img.width]
                    .copy_from_slice(src);
            }
        }
        for y in 0..img.height {
            pixel_attention_mask[(n * height + y) * width..][..img.width].fill(true);
        }
    }
    PaddedImages {
        count: images.len(),
        height,
        width,
        pixel_values,
        pixel_attention_mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_matches_the_spec_examples() {
        // (H, W) in, (H, W) out; docs/models/idefics2-spec.md A.4.
        assert_eq!(resize_output_size(853, 1280, 378, 980), (653, 980));
        assert_eq!(resize_output_size(426, 640, 378, 980), (426, 640));
        assert_eq!(resize_output_size(427, 640, 378, 980), (427, 640));
        assert_eq!(resize_output_size(300, 500, 378, 980), (378, 500));
        assert_eq!(resize_output_size(2000, 1000, 378, 980), (980, 490));
        assert_eq!(resize_output_size(10, 20, 378, 980), (378, 378));
    }

    #[test]
    fn splitting_gives_quadrants_then_the_whole_image() {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let parts = split(&image);
        let dims: Vec<_> = parts.iter().map(|p| p.dimensions()).collect();
        assert_eq!(dims, vec![(2, 1), (3, 1), (2, 2), (3, 2), (5, 3)]);
        assert_eq!(parts[3].get_pixel(0, 0).0, [2, 1, 0]);
        assert_eq!(parts[4], image);
    }

    #[test]
    fn padding_puts_images_top_left_with_a_mask() {
        let a = ProcessedImage {
            height: 1,
            width: 2,
            data: vec![1.0; 6],
        };
        let b = ProcessedImage {
            height: 2,
            width: 1,
            data: vec![2.0; 6],
        };
        let padded = pad_images(&[&a, &b]);
        assert_eq!((padded.count, padded.height, padded.width), (2, 2, 2));
        assert_eq!(&padded.pixel_values[..4], &[1.0, 1.0, 0.0, 0.0]);
        assert_eq!(&padded.pixel_values[12..16], &[2.0, 0.0, 2.0, 0.0]);
        assert_eq!(
            padded.pixel_attention_mask,
            vec![true, true, false, false, true, false, true, false]
        );
    }
}
