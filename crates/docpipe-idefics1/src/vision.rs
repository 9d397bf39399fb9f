//! The CLIP ViT of Idefics1 (`model.vision_model`, `IdeficsVisionTransformer`): a stride-p
//! patch convolution without bias, the class token, learned positions, `pre_layrnorm`, and
//! pre-norm encoder layers with exact GELU (docpipe-vlm's, which CLIP and SigLIP share).
//!
//! The decoder's cross-attention (through the perceiver) reads `last_hidden_state`: every
//! token, class token included, straight from the last layer. `post_layernorm` only normalizes
//! the pooled class token, which Idefics does not use, so it is not loaded.

use candle_core::{Module, Result, Tensor};
use docpipe_vlm::config::VisionConfig;
use docpipe_vlm::image::ProcessedImage;
use docpipe_vlm::nn::{LayerNorm, Linear};
use docpipe_vlm::vision::{patch_grid, patchify, EncoderLayer};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

/// The tower.
pub struct VisionTransformer {
    config: VisionConfig,
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

impl VisionTransformer {
    /// The tower of `config` from the view of `model.vision_model`.
    pub fn new(config: &VisionConfig, w: &Weights) -> std::result::Result<Self, LoadError> {
        let (h, p) = (config.hidden_size, config.patch_size);
        let side = config.num_patches_per_side();
        let embeddings = w.pp("embeddings");
        // The stride-p conv is one matmul over flattened patches (see `patchify`).
        let conv = embeddings
            .pp("patch_embedding")
            .get("weight", (h, 3, p, p))?
            .reshape((h, 3 * p * p))
            .map_err(LoadError::Device)?;
        let class_embedding = embeddings
            .get("class_embedding", h)?
            .reshape((1, h))
            .map_err(LoadError::Device)?;
        let layers = w.pp("encoder.layers");
        Ok(VisionTransformer {
            config: config.clone(),
            patch_embedding: Linear::new(conv, None),
            class_embedding,
            position_embedding: embeddings
                .pp("position_embedding")
                .get("weight", (side * side + 1, h))?,
            pre_layrnorm: LayerNorm::load(&w.pp("pre_layrnorm"), h, config.layer_norm_eps)?,
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(config, &layers.pp(i)))
                .collect::<std::result::Result<_, _>>()?,
        })
    }

    /// Tokens per image: the class token and the patches.
    pub fn tokens(&self) -> usize {
        let side = self.config.num_patches_per_side();
        side * side + 1
    }

    /// `last_hidden_state` of several images of the configured size, packed in order:
    /// `(images × tokens, hidden)`. Norms and MLPs run over all tokens at once, attention per
    /// image, so each image's rows are the ones it gets alone.
    pub fn forward(&self, images: &[&ProcessedImage]) -> Result<Tensor> {
        let device = self.position_embedding.device();
        let dtype = self.position_embedding.dtype();
        let (p, side) = (self.config.patch_size, self.config.num_patches_per_side());
        let mut rows = Vec::with_capacity(images.len() * 2);
        for image in images {
            if patch_grid(image, p) != (side, side) {
                candle_core::bail!(
                    "a {}x{} image does not fill the tower's {side}x{side} patches of {p}",
                    image.width,
                    image.height
                );
            }
            let patches = patchify(image, p, device)?.to_dtype(dtype)?;
            let tokens = Tensor::cat(
                &[
                    &self.class_embedding,
                    &self.patch_embedding.forward(&patches)?,
                ],
                0,
            )?;
            rows.push((tokens + &self.position_embedding)?);
        }
        let mut hidden = self.pre_layrnorm.forward(&Tensor::cat(&rows, 0)?)?;
        let lens = vec![self.tokens(); images.len()];
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &lens, &self.config)?;
        }
        Ok(hidden)
    }
}
