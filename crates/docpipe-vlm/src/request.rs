//! What the families share between `prepare` and `generate`: prepared requests, the cache of
//! recently preprocessed pages, the cost of a request, and a batch's generation with one
//! vision encoding per distinct page (architecture.md, "The model trait").

use std::sync::{Arc, Mutex, Weak};

use candle_core::Tensor;
use docpipe_core::{Generation, ModelError, RequestCost};
use image::RgbImage;

use crate::config::GenerationConfig;
use crate::device::model_error;
use crate::error::PromptError;
use crate::generation::{generate, Decoder, SequenceInput};
use crate::image::ProcessedImage;
use crate::text::TextModel;
use crate::vision::patch_grid;

/// How many recently preprocessed images a model remembers, so that several questions about
/// one page preprocess it once.
const RECENT_IMAGES: usize = 16;

/// An input image of a prepared request: the page it came from (for sharing its encoding
/// within a batch) and its preprocessed crops or tiles.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The page, shared by every request about it.
    pub source: Arc<RgbImage>,
    /// What the vision tower encodes, in the order of the prompt's image blocks.
    pub crops: Arc<Vec<ProcessedImage>>,
}

/// A request ready for generation.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// The prompt, image tokens expanded.
    pub input_ids: Vec<u32>,
    /// Its images, in prompt order.
    pub images: Vec<PreparedImage>,
    /// The generation limit.
    pub max_new_tokens: usize,
}

/// A generation plus, when asked for, the raw logits that chose its first token.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailedGeneration {
    /// What the pipeline gets.
    pub generation: Generation,
    /// The first step's raw logits, for comparisons with transformers.
    pub first_logits: Option<Vec<f32>>,
}

/// What was computed from page images (crops, vision features), remembered while some request
/// still holds the page, the `capacity` pages added last at most. Keyed by the page's `Arc`:
/// a live `Weak` cannot point at another page's allocation, a dead one could, so dead entries
/// go before every lookup.
#[derive(Debug)]
pub struct PageCache<V> {
    entries: Vec<(Weak<RgbImage>, V)>,
    capacity: usize,
}

impl<V: Clone> PageCache<V> {
    /// An empty cache of at most `capacity` pages.
    pub fn new(capacity: usize) -> Self {
        PageCache {
            entries: Vec::new(),
            capacity,
        }
    }

    /// What is remembered for `page`.
    pub fn get(&mut self, page: &Arc<RgbImage>) -> Option<V> {
        self.entries.retain(|(weak, _)| weak.strong_count() > 0);
        self.entries
            .iter()
            .find(|(weak, _)| weak.upgrade().is_some_and(|a| Arc::ptr_eq(&a, page)))
            .map(|(_, value)| value.clone())
    }

    /// Remembers `value` for `page`, forgetting the page added first when full.
    pub fn insert(&mut self, page: &Arc<RgbImage>, value: V) {
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push((Arc::downgrade(page), value));
    }
}

/// Recently preprocessed pages and their crops, shared by the threads that prepare requests.
#[derive(Debug)]
pub struct RecentImages {
    pages: Mutex<PageCache<Arc<Vec<ProcessedImage>>>>,
}

impl Default for RecentImages {
    fn default() -> Self {
        RecentImages {
            pages: Mutex::new(PageCache::new(RECENT_IMAGES)),
        }
    }
}

impl RecentImages {
    /// The crops of `image`: remembered, or made by `preprocess` and remembered. The lock is
    /// not held while preprocessing, so other pages are prepared meanwhile.
    pub fn get_or_insert(
        &self,
        image: &Arc<RgbImage>,
        preprocess: impl FnOnce(&RgbImage) -> Result<Vec<ProcessedImage>, ModelError>,
    ) -> Result<Arc<Vec<ProcessedImage>>, ModelError> {
        let lock = || self.pages.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(crops) = lock().get(image) {
            return Ok(crops);
        }
        let crops = Arc::new(preprocess(image)?);
        lock().insert(image, crops.clone());
        Ok(crops)
    }
}

/// Checks that the prompt has one image token per feature row its images will give.
pub fn check_image_tokens(
    request: &PreparedRequest,
    image_token_id: u32,
    tokens_per_crop: usize,
) -> Result<(), ModelError> {
    let image_tokens = request
        .input_ids
        .iter()
        .filter(|&&id| id == image_token_id)
        .count();
    let crops: usize = request.images.iter().map(|i| i.crops.len()).sum();
    let expected = crops * tokens_per_crop;
    if image_tokens == expected {
        Ok(())
    } else {
        Err(ModelError::InvalidRequest(format!(
            "the prompt has {image_tokens} image tokens but its {} images need {expected}",
            request.images.len()
        )))
    }
}

/// The budget units of a request: its tokens and its vision patches of side `patch`.
pub fn request_cost(request: &PreparedRequest, patch: usize) -> RequestCost {
    RequestCost {
        prompt_tokens: request.input_ids.len(),
        max_new_tokens: request.max_new_tokens,
        image_patches: request
            .images
            .iter()
            .flat_map(|i| i.crops.iter())
            .map(|c| {
                let (h, w) = patch_grid(c, patch);
                h * w
            })
            .sum(),
    }
}

/// The parts of a loaded model that a batch's generation needs.
pub struct Generator<'a> {
    /// The decoder.
    pub text: &'a TextModel,
    /// eos ids and bans.
    pub config: &'a GenerationConfig,
    /// The token whose embeddings image features replace.
    pub image_token_id: u32,
}

impl<'a> Generator<'a> {
    /// Greedy generation for a batch. `encode` turns one page's crops into its feature rows
    /// (once per distinct page of the batch); `decode` turns ids into text.
    pub fn run(
        &self,
        batch: &[&PreparedRequest],
        keep_first_logits: bool,
        encode: impl Fn(&[ProcessedImage]) -> candle_core::Result<Tensor>,
        decode: impl Fn(&[u32]) -> Result<String, PromptError>,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        let outputs = generate(
            self.text,
            sequence_inputs(batch, &mut EncodedPages::new(usize::MAX), encode)?,
            self.config,
            self.image_token_id,
            keep_first_logits,
        )
        .map_err(model_error)?;
        batch
            .iter()
            .zip(outputs)
            .map(|(request, out)| out.into_detailed(request.input_ids.len(), &decode))
            .collect()
    }

    /// An empty running batch, for continuous batching.
    pub fn decoder<K: Copy>(&self, keep_first_logits: bool) -> Decoder<'a, K> {
        Decoder::new(
            self.text,
            self.config,
            self.image_token_id,
            keep_first_logits,
        )
    }
}

/// The decoder's inputs for a batch of requests. A page already in `pages` is not encoded
/// again; the others are encoded by `encode` and added (requests about one page share its
/// `Arc`).
pub fn sequence_inputs<'r>(
    batch: &[&'r PreparedRequest],
    pages: &mut EncodedPages,
    encode: impl Fn(&[ProcessedImage]) -> candle_core::Result<Tensor>,
) -> Result<Vec<SequenceInput<'r>>, ModelError> {
    let mut inputs = Vec::with_capacity(batch.len());
    for request in batch {
        let features = request
            .images
            .iter()
            .map(|image| pages.features(image, &encode))
            .collect::<Result<Vec<_>, _>>()?;
        let image_features = if features.is_empty() {
            None
        } else {
            Some(Tensor::cat(&features, 0).map_err(model_error)?)
        };
        inputs.push(SequenceInput {
            input_ids: &request.input_ids,
            image_features,
            image_ids: request
                .images
                .iter()
                .map(|i| Arc::as_ptr(&i.source) as usize)
                .collect(),
            max_new_tokens: request.max_new_tokens,
        });
    }
    Ok(inputs)
}

/// Vision features of pages, by page: a static batch encodes each of its pages once, and a
/// continuous batch, whose questions about one page may join at different steps, encodes it
/// once for all of them while it remembers the page.
pub type EncodedPages = PageCache<Tensor>;

impl EncodedPages {
    /// The features of `image`: remembered, or computed by `encode` and remembered.
    fn features(
        &mut self,
        image: &PreparedImage,
        encode: impl Fn(&[ProcessedImage]) -> candle_core::Result<Tensor>,
    ) -> Result<Tensor, ModelError> {
        if let Some(features) = self.get(&image.source) {
            return Ok(features);
        }
        let features = encode(&image.crops).map_err(model_error)?;
        self.insert(&image.source, features.clone());
        Ok(features)
    }
}

/// Refuses a page whose crops include one smaller than a vision patch (it would have no
/// features at all).
pub fn check_patches(
    image: &RgbImage,
    crops: &[ProcessedImage],
    patch: usize,
) -> Result<(), ModelError> {
    match crops.iter().find(|c| {
        let (h, w) = patch_grid(c, patch);
        h == 0 || w == 0
    }) {
        None => Ok(()),
        Some(small) => Err(ModelError::InvalidRequest(
            crate::error::ImageError::SmallerThanPatch {
                width: image.width(),
                height: image.height(),
                crop_width: small.width,
                crop_height: small.height,
                patch,
            }
            .to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use candle_core::Device;

    use super::*;

    fn page(side: u32) -> PreparedImage {
        PreparedImage {
            source: Arc::new(RgbImage::new(side, side)),
            crops: Arc::new(Vec::new()),
        }
    }

    #[test]
    fn a_page_is_encoded_once_while_a_request_holds_it() {
        let encoded = Cell::new(0);
        let encode = |_: &[ProcessedImage]| {
            encoded.set(encoded.get() + 1);
            Tensor::full(encoded.get() as f32, (1, 2), &Device::Cpu)
        };
        let value = |t: Tensor| t.to_vec2::<f32>().unwrap()[0][0];
        let mut pages = EncodedPages::new(2);
        let (a, b) = (page(1), page(2));
        assert_eq!(value(pages.features(&a, encode).unwrap()), 1.0);
        assert_eq!(value(pages.features(&b, encode).unwrap()), 2.0);
        assert_eq!(value(pages.features(&a, encode).unwrap()), 1.0);
        assert_eq!(encoded.get(), 2);
        let c = page(3);
        assert_eq!(value(pages.features(&c, encode).unwrap()), 3.0);
        assert_eq!(value(pages.features(&b, encode).unwrap()), 2.0);
        assert_eq!(value(pages.features(&a, encode).unwrap()), 4.0, "forgotten");
        drop(b);
        let d = page(4);
        assert_eq!(value(pages.features(&d, encode).unwrap()), 5.0);
        assert_eq!(pages.entries.len(), 2, "the dropped page is gone");
    }
}
