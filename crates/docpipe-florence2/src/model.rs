//! The assembled Florence-2 model behind `docpipe_core::VisionLanguageModel`: prepare builds
//! the prompt and preprocesses the page; generate encodes each distinct page once, runs the
//! BART encoder per request and decodes all requests together with the checkpoint's search.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use docpipe_core::{
    ChatRequest, ContentItem, Generation, ModelError, RequestCost, VisionLanguageModel,
};
use docpipe_vlm::config::{check_model_type, ConfigFile};
use docpipe_vlm::device::model_error;
use docpipe_vlm::image::ProcessedImage;
use docpipe_vlm::request::DetailedGeneration;
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;
use image::RgbImage;

use crate::bart::{Bart, CrossCache, DecoderCache, RowGroup};
use crate::beam::{Search, StepModel};
use crate::config::{GenerationConfig, TextConfig, VisionConfig, MODEL_TYPE};
use crate::davit::DaVit;
use crate::layout::Layout;
use crate::processor::{expand_task_prompt, Processor};
use crate::projector::Projector;

/// A request ready for generation.
#[derive(Debug, Clone)]
pub struct Florence2Request {
    /// The page, shared by every request about it.
    pub source: Arc<RgbImage>,
    /// Its preprocessed pixels.
    pub pixels: Arc<ProcessedImage>,
    /// The prompt after the task table.
    pub prompt: String,
    /// The encoder's text ids: `<s>`, the prompt, `</s>`.
    pub text_ids: Vec<u32>,
    /// The generation limit.
    pub max_new_tokens: usize,
}

/// A Florence-2 checkpoint loaded on one device.
pub struct Florence2Model {
    model_id: String,
    layout: Layout,
    text_config: TextConfig,
    generation: GenerationConfig,
    processor: Processor,
    vision: DaVit,
    projector: Projector,
    bart: Bart,
    /// The last stage's grid plus the mean token.
    image_tokens: usize,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for Florence2Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Florence2Model")
            .field("model_id", &self.model_id)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Florence2Model {
    /// The same model under another `model_id`: a checkpoint fetched from the hub or a bucket is
    /// named by its origin (`org/name@<commit>`), not by the cache folder it was loaded from.
    pub fn with_model_id(mut self, model_id: String) -> Self {
        self.model_id = model_id;
        self
    }

    /// Loads a checkpoint directory in either layout ([`Layout`]).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, LoadError> {
        let file = ConfigFile::read(dir)?;
        check_model_type(&file.json, MODEL_TYPE, &file.path)?;
        let vision_config = VisionConfig::from_root(&file.json, &file.path)?;
        let text_config = TextConfig::from_root(&file.json, &file.path)?;
        let generation = GenerationConfig::load(dir, &file.json, &file.path)?;
        let processor = Processor::load(dir)?;
        let weights = Weights::load(dir, dtype, device)?;
        let layout = Layout::detect(&weights).map_err(|message| LoadError::Weights {
            path: dir.to_path_buf(),
            message,
        })?;
        let vision = DaVit::load(&vision_config, &weights, layout)?;
        let projector = Projector::load(&vision_config, &weights, layout)?;
        let bart = Bart::load(
            &text_config,
            &layout.language(&weights),
            &layout.lm_head(&weights),
        )?;
        let size = processor.config.size;
        let grid = vision_config
            .feature_size(size.height as usize, size.width as usize)
            .filter(|&(h, w)| h.max(w) <= projector.max_positions())
            .ok_or_else(|| {
                LoadError::invalid(
                    &file.path,
                    format!(
                        "a {}x{} image gives no feature map that the {} positions of vision_config cover",
                        size.width,
                        size.height,
                        projector.max_positions()
                    ),
                )
            })?;
        Ok(Florence2Model {
            model_id: weights.model_id(dir, &file.bytes),
            layout,
            text_config,
            generation,
            processor,
            vision,
            projector,
            bart,
            image_tokens: grid.0 * grid.1 + 1,
            device: device.clone(),
            dtype,
        })
    }

    /// Which tensor layout the checkpoint is in.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The BART settings.
    pub fn text_config(&self) -> &TextConfig {
        &self.text_config
    }

    /// The checkpoint's decoding settings.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The image processor and tokenizer.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Image tokens per page: the last stage's grid plus the mean token.
    pub fn image_tokens(&self) -> usize {
        self.image_tokens
    }

    /// The projected image tokens `(image_tokens, d_model)` of preprocessed pixels.
    pub fn image_features(&self, pixels: &ProcessedImage) -> candle_core::Result<Tensor> {
        let x = Tensor::from_slice(&pixels.data, (3, pixels.height, pixels.width), &self.device)?
            .to_dtype(self.dtype)?;
        self.projector.forward(&self.vision.forward(&x)?)
    }

    /// Generates with the checkpoint's decoding settings; see [`Self::generate_with`].
    pub fn generate_detailed(
        &self,
        batch: &[&Florence2Request],
        want_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        self.generate_with(&Search::new(&self.generation), batch, want_logits)
    }

    /// Generates for a batch with `search`; with `want_logits`, also returns each request's
    /// raw logits of the first decoder step (before any logits processor).
    pub fn generate_with(
        &self,
        search: &Search,
        batch: &[&Florence2Request],
        want_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        let encoded = self.encode(batch).map_err(model_error)?;
        let mut step = Steps {
            bart: &self.bart,
            cross: &encoded,
            cache: DecoderCache::default(),
        };
        let limits: Vec<usize> = batch.iter().map(|r| r.max_new_tokens).collect();
        let decoded = search
            .run(&mut step, &limits, want_logits)
            .map_err(model_error)?;
        batch
            .iter()
            .zip(decoded)
            .map(|(request, d)| {
                let text = self
                    .processor
                    .decode(&d.token_ids)
                    .map_err(|e| ModelError::Device(format!("tokenizer: {e}")))?;
                Ok(DetailedGeneration {
                    generation: Generation {
                        text,
                        token_ids: d.token_ids,
                        finish_reason: d.finish_reason,
                        prompt_tokens: self.image_tokens() + request.text_ids.len(),
                    },
                    first_logits: d.first_logits,
                })
            })
            .collect()
    }

    /// Each request's cross-attention cache: pages encoded once per batch, then the BART
    /// encoder over `[image tokens, prompt embeddings]`.
    fn encode(&self, batch: &[&Florence2Request]) -> candle_core::Result<Vec<CrossCache>> {
        let mut pages: Vec<(&Arc<RgbImage>, Tensor)> = Vec::new();
        let mut caches = Vec::with_capacity(batch.len());
        for request in batch {
            let features = match pages.iter().find(|(p, _)| Arc::ptr_eq(p, &request.source)) {
                Some((_, f)) => f.clone(),
                None => {
                    let f = self.image_features(&request.pixels)?;
                    pages.push((&request.source, f.clone()));
                    f
                }
            };
            let text = self.bart.embed(&request.text_ids)?;
            let embeds = Tensor::cat(&[features, text], 0)?;
            caches.push(self.bart.cross_cache(&self.bart.encode(&embeds)?)?);
        }
        Ok(caches)
    }
}

/// The decoder as the search sees it.
struct Steps<'a> {
    bart: &'a Bart,
    cross: &'a [CrossCache],
    cache: DecoderCache,
}

impl StepModel for Steps<'_> {
    type Error = candle_core::Error;

    fn step(
        &mut self,
        tokens: &[u32],
        position: usize,
        active: &[usize],
        rows: &[usize],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let groups: Vec<RowGroup<'_>> = active
            .iter()
            .zip(rows)
            .map(|(&i, &rows)| RowGroup {
                cross: &self.cross[i],
                rows,
            })
            .collect();
        self.bart
            .decode_step(tokens, position, &mut self.cache, &groups)?
            .to_vec2()
    }

    fn select(&mut self, parents: &[u32]) -> candle_core::Result<()> {
        self.cache.select(parents)
    }
}

impl VisionLanguageModel for Florence2Model {
    type Prepared = Florence2Request;

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn image_longest_edge(&self) -> u32 {
        let size = self.processor.config.size;
        size.height.max(size.width)
    }

    fn prepare(&self, request: &ChatRequest) -> Result<Florence2Request, ModelError> {
        let invalid = |m: String| ModelError::InvalidRequest(m);
        let items: Vec<&ContentItem> = request.messages.iter().flat_map(|m| &m.content).collect();
        let images = items
            .iter()
            .filter(|i| matches!(i, ContentItem::Image { .. }))
            .count();
        if images != 1 || request.images.len() != 1 {
            return Err(invalid(format!(
                "Florence-2 takes exactly one image per request; this one has {images} image items and {} images",
                request.images.len()
            )));
        }
        let text: String = items
            .iter()
            .filter_map(|i| match i {
                ContentItem::Text { text } => Some(text.as_str()),
                ContentItem::Image { .. } => None,
            })
            .collect();
        let prompt = expand_task_prompt(&text).map_err(|e| invalid(e.to_string()))?;
        let text_ids = self
            .processor
            .tokenize(&prompt)
            .map_err(|e| invalid(format!("tokenizer: {e}")))?;
        let positions = self.bart.max_positions();
        let encoder_tokens = self.image_tokens() + text_ids.len();
        if encoder_tokens > positions || request.max_new_tokens > positions {
            return Err(invalid(format!(
                "{encoder_tokens} encoder tokens and max_new_tokens {} must each fit in the model's {positions} positions",
                request.max_new_tokens
            )));
        }
        let source = request.images[0].clone();
        Ok(Florence2Request {
            pixels: Arc::new(self.processor.preprocess(&source)),
            source,
            prompt,
            text_ids,
            max_new_tokens: request.max_new_tokens,
        })
    }

    fn cost(&self, prepared: &Florence2Request) -> RequestCost {
        RequestCost {
            prompt_tokens: self.image_tokens() + prepared.text_ids.len(),
            max_new_tokens: prepared.max_new_tokens,
            image_patches: self.image_tokens(),
        }
    }

    fn generate(&self, batch: &[&Florence2Request]) -> Result<Vec<Generation>, ModelError> {
        Ok(self
            .generate_detailed(batch, false)?
            .into_iter()
            .map(|d| d.generation)
            .collect())
    }
}
