//! Image preprocessing as transformers 5.23's PIL `Idefics3ImageProcessor` does it (spec G.2,
//! with the corrections of `fixtures/idefics3/README.md`): RGB conversion first (alpha
//! composited onto white, `docpipe_vlm::image`), the longest side scaled to `size` (small
//! images grow too), then with splitting a resize to multiples of the tile, row-major tiles and
//! the whole image squashed to one tile last; without splitting, only the squashed image. Every
//! resize is Pillow's LANCZOS on the uint8 result of the one before.

use docpipe_vlm::image::{Normalizer, ProcessedImage};
use docpipe_vlm::resample::resize;
use docpipe_vlm::ImageError;
use image::RgbImage;

use crate::config::ProcessorConfig;

/// transformers' cap on any side after step 1 (`MAX_IMAGE_SIZE`).
const MAX_SIDE: usize = 4096;

/// How one input image is cut: its sizes after each step and its tile grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `(height, width)` after step 1.
    pub resized: (usize, usize),
    /// `(height, width)` after step 2, when splitting.
    pub encoder: Option<(usize, usize)>,
    /// Tile rows (0: unsplit, the global image only).
    pub rows: usize,
    /// Tile columns (0: unsplit).
    pub cols: usize,
}

impl Layout {
    /// Tiles the vision tower encodes, the global image included.
    pub fn tiles(&self) -> usize {
        self.rows * self.cols + 1
    }
}

/// Step 1 (`_resize_output_size_rescale_to_max_len`, then the 4096 cap): the longest side
/// becomes `longest`, the other the float64 quotient truncated, made even by adding one, and
/// at least 1.
pub fn resized_size(height: usize, width: usize, longest: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let (mut h, mut w) = (height, width);
    if w >= h {
        w = longest;
        h = (w as f64 / aspect) as usize;
        h += h % 2;
    } else {
        h = longest;
        w = (h as f64 * aspect) as usize;
        w += w % 2;
    }
    let (h, w) = (h.max(1), w.max(1));
    // `_resize_output_size_scale_below_upper_bound` with the new aspect.
    let aspect = w as f64 / h as f64;
    let (h, w) = if w >= h && w > MAX_SIDE {
        ((MAX_SIDE as f64 / aspect) as usize, MAX_SIDE)
    } else if h > w && h > MAX_SIDE {
        (MAX_SIDE, (MAX_SIDE as f64 * aspect) as usize)
    } else {
        (h, w)
    };
    (h.max(1), w.max(1))
}

/// Step 2 (`resize_for_vision_encoder`): the long side rounded up to a multiple of `tile`, the
/// short side from the step-1 aspect, truncated, then rounded up too.
pub fn encoder_size(height: usize, width: usize, tile: usize) -> (usize, usize) {
    let aspect = width as f64 / height as f64;
    let up = |n: usize| n.div_ceil(tile) * tile;
    if width >= height {
        let w = up(width);
        (up((w as f64 / aspect) as usize), w)
    } else {
        let h = up(height);
        (h, up((h as f64 * aspect) as usize))
    }
}

/// Turns RGB images into tiles according to a checkpoint's processor settings.
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

    /// The tile side.
    pub fn tile(&self) -> usize {
        self.config.max_image_size.longest_edge
    }

    /// How an image of `height × width` is cut; a pure function of the size, so the prompt
    /// can be built before (or without) the pixels.
    pub fn layout(&self, height: usize, width: usize) -> Layout {
        let tile = self.tile();
        let resized = if self.config.do_resize {
            resized_size(height, width, self.config.size.longest_edge)
        } else {
            (height, width)
        };
        if !self.config.do_image_splitting {
            return Layout {
                resized,
                encoder: None,
                rows: 0,
                cols: 0,
            };
        }
        let (h, w) = encoder_size(resized.0, resized.1, tile);
        let (rows, cols) = if h > tile || w > tile {
            (
                h.saturating_sub(tile) / tile + 1,
                w.saturating_sub(tile) / tile + 1,
            )
        } else {
            (0, 0)
        };
        Layout {
            resized,
            encoder: Some((h, w)),
            rows,
            cols,
        }
    }

    /// The tiles of one input image in the order of its prompt block: row-major tiles, then
    /// the global image (or the global image alone).
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<ProcessedImage>, ImageError> {
        let (height, width) = (image.height() as usize, image.width() as usize);
        if height == 0 || width == 0 {
            return Err(ImageError::Empty);
        }
        let layout = self.layout(height, width);
        let resample = self.config.resample;
        let to = |img: &RgbImage, (h, w): (usize, usize)| -> Result<RgbImage, ImageError> {
            if h == 0 || w == 0 {
                return Err(ImageError::TooSmallToSplit {
                    width: image.width(),
                    height: image.height(),
                });
            }
            Ok(resize(img, w as u32, h as u32, resample))
        };
        let resized = if self.config.do_resize {
            to(image, layout.resized)?
        } else {
            image.clone()
        };
        let tile = self.tile();
        let whole = match layout.encoder {
            Some(size) => to(&resized, size)?,
            None => resized,
        };
        if layout.encoder.is_some() && layout.rows == 0 {
            return Ok(vec![self.normalizer.apply(&whole)]);
        }
        let t = tile as u32;
        let mut tiles: Vec<ProcessedImage> = (0..layout.rows as u32)
            .flat_map(|r| (0..layout.cols as u32).map(move |c| (r, c)))
            .map(|(r, c)| {
                let crop = image::imageops::crop_imm(&whole, c * t, r * t, t, t).to_image();
                self.normalizer.apply(&crop)
            })
            .collect();
        tiles.push(self.normalizer.apply(&to(&whole, (tile, tile))?));
        Ok(tiles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_gives_thirteen_tiles() {
        // spec G.2: 1280x853 -> 1456x970 -> 1456x1092 -> 3 x 4 tiles + the global image.
        assert_eq!(resized_size(853, 1280, 1456), (970, 1456));
        assert_eq!(encoder_size(970, 1456, 364), (1092, 1456));
    }

    #[test]
    fn quotients_truncate_in_float64() {
        // fixtures/idefics3/README.md: 59 x 96 -> 58 x 96, 208 x 15 -> 1456 x 104 at the 8B
        // settings (exact arithmetic would give 60 and 106).
        assert_eq!(resized_size(59, 96, 96), (58, 96));
        assert_eq!(resized_size(208, 15, 1456), (1456, 104));
    }
}
