//! The SigLIP vision tower in its NaViT form: patch embedding, position ids from bucketized
//! fractional coordinates, pre-norm encoder layers and the post layer norm.
//!
//! Both families use this tower: Idefics2 with its images at their own sizes (spec C),
//! Idefics3 with full square tiles, whose position ids are then the identity (spec G.4).
//!
//! Each image (crop) is encoded at its own size, with attention over its own patches only.
//! transformers pads a batch and masks patches that are not fully inside the image
//! (`sum == 196`); the valid patches are exactly the `floor(h/14) × floor(w/14)` grid encoded
//! here, so the features are the same as in a padded batch, and they do not depend on what
//! else is in the batch.

use candle_core::{Device, Module, Result, Tensor};

use crate::config::VisionConfig;
use crate::error::LoadError;
use crate::image::ProcessedImage;
use crate::nn::{unmasked_attention, AttentionProjections, Heads, LayerNorm, Linear, Rows};
use crate::weights::Weights;

/// Bucket index along one side for each of `n` valid patches, on a `side`-bucket table
/// (`docs/models/idefics2-spec.md` C.3, float32 recipe of transformers ≥ 5.21).
pub fn bucket_ids(n: usize, side: usize) -> Vec<u32> {
    let boundaries: Vec<f32> = (0..side.saturating_sub(1))
        .map(|j| ((j + 1) as f64 / side as f64) as f32)
        .collect();
    let step = 1.0f32 / n as f32;
    let max = (1.0f64 - 1e-6) as f32;
    (0..n)
        .map(|i| {
            let frac = (i as f32 * step).min(max);
            boundaries.iter().filter(|&&b| b <= frac).count() as u32
        })
        .collect()
}

/// Position-table rows for an `nb_h × nb_w` patch grid, row-major.
pub fn position_ids(nb_h: usize, nb_w: usize, side: usize) -> Vec<u32> {
    let rows = bucket_ids(nb_h, side);
    let cols = bucket_ids(nb_w, side);
    rows.iter()
        .flat_map(|r| cols.iter().map(move |c| r * side as u32 + c))
        .collect()
}

/// Patch grid of an image: patches entirely inside it.
pub fn patch_grid(image: &ProcessedImage, patch: usize) -> (usize, usize) {
    (image.height / patch, image.width / patch)
}

/// Flattens the valid patches of a channel-first image into `(P, C·p·p)` rows in the
/// `(channel, y, x)` order of the conv weight, so the conv is one matmul.
pub fn patchify(image: &ProcessedImage, patch: usize, device: &Device) -> Result<Tensor> {
    let (nb_h, nb_w) = patch_grid(image, patch);
    let width = patch * patch * 3;
    let plane = image.height * image.width;
    let mut out = vec![0f32; nb_h * nb_w * width];
    for r in 0..nb_h {
        for c in 0..nb_w {
            let row = &mut out[(r * nb_w + c) * width..][..width];
            for ch in 0..3 {
                for y in 0..patch {
                    let src = ch * plane + (r * patch + y) * image.width + c * patch;
                    row[(ch * patch + y) * patch..][..patch]
                        .copy_from_slice(&image.data[src..src + patch]);
                }
            }
        }
    }
    Tensor::from_vec(out, (nb_h * nb_w, width), device)
}

/// One pre-norm encoder layer (`encoder.layers.N`), the same in SigLIP and CLIP towers.
pub struct EncoderLayer {
    norm1: LayerNorm,
    attn: AttentionProjections,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    /// The layer of `config` from the view of `encoder.layers.N`.
    pub fn new(config: &VisionConfig, w: &Weights) -> std::result::Result<Self, LoadError> {
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let mlp = w.pp("mlp");
        Ok(EncoderLayer {
            norm1: LayerNorm::load(&w.pp("layer_norm1"), h, eps)?,
            attn: AttentionProjections::load(&w.pp("self_attn"), "out_proj", h, h, h, true)?,
            norm2: LayerNorm::load(&w.pp("layer_norm2"), h, eps)?,
            fc1: Linear::load(&mlp.pp("fc1"), h, config.intermediate_size, true)?,
            fc2: Linear::load(&mlp.pp("fc2"), config.intermediate_size, h, true)?,
        })
    }

    /// The layer over the packed tokens `(Σ lens, hidden)` of several images, attention per image.
    pub fn forward(
        &self,
        hidden: &Tensor,
        lens: &[usize],
        config: &VisionConfig,
    ) -> Result<Tensor> {
        let (heads, head_dim) = (config.num_attention_heads, config.head_dim());
        let scale = (head_dim as f64).powf(-0.5);
        let x = self.norm1.forward(hidden)?;
        let (q, k, v) = self.attn.qkv(&x, Rows::Packed)?;
        let heads = Heads {
            heads,
            kv_heads: heads,
            head_dim,
        };
        let a = unmasked_attention(&q, &k, &v, heads, lens, lens, scale)?;
        let hidden = (hidden + self.attn.o.forward(&a)?)?;
        let x = self.norm2.forward(&hidden)?;
        let x = self
            .fc2
            .forward(&config.hidden_act.apply(&self.fc1.forward(&x)?)?)?;
        hidden + x
    }
}

/// The SigLIP tower (`model.vision_model`).
pub struct VisionTower {
    config: VisionConfig,
    patch_embedding: Linear,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl VisionTower {
    /// The tower of `config` from the view of `model.vision_model`.
    pub fn new(config: &VisionConfig, w: &Weights) -> std::result::Result<Self, LoadError> {
        let h = config.hidden_size;
        let p = config.patch_size;
        let side = config.num_patches_per_side();
        let embeddings = w.pp("embeddings");
        let patch = embeddings.pp("patch_embedding");
        // The stride-p conv is one matmul over flattened patches (see `patchify`).
        let conv = patch
            .get("weight", (h, 3, p, p))?
            .reshape((h, 3 * p * p))
            .map_err(LoadError::Device)?;
        let patch_embedding = Linear::new(conv, Some(patch.get("bias", h)?));
        let position_embedding = embeddings
            .pp("position_embedding")
            .get("weight", (side * side, h))?;
        let layers = w.pp("encoder.layers");
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(config, &layers.pp(i)))
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        Ok(VisionTower {
            config: config.clone(),
            patch_embedding,
            position_embedding,
            layers,
            post_layernorm: LayerNorm::load(&w.pp("post_layernorm"), h, config.layer_norm_eps)?,
        })
    }

    /// `last_hidden_state` of the valid patches of several images (the crops of one page),
    /// packed in image order: `(Σ P, hidden)`, and the number of patches of each image.
    ///
    /// Embeddings, norms and MLPs run over all patches at once and attention runs per image,
    /// so each image's rows are the ones it gets alone, in fewer and larger matmuls.
    pub fn forward(&self, images: &[ProcessedImage]) -> Result<(Tensor, Vec<usize>)> {
        let device = self.position_embedding.device();
        let dtype = self.position_embedding.dtype();
        let p = self.config.patch_size;
        let side = self.config.num_patches_per_side();
        let mut patches = Vec::with_capacity(images.len());
        let mut ids = Vec::new();
        let mut lens = Vec::with_capacity(images.len());
        for image in images {
            let (nb_h, nb_w) = patch_grid(image, p);
            if nb_h == 0 || nb_w == 0 {
                candle_core::bail!(
                    "image of {}x{} is smaller than one {p}x{p} patch",
                    image.width,
                    image.height
                );
            }
            patches.push(patchify(image, p, device)?);
            ids.extend(position_ids(nb_h, nb_w, side));
            lens.push(nb_h * nb_w);
        }
        let patches = Tensor::cat(&patches, 0)?.to_dtype(dtype)?;
        let ids = Tensor::from_vec(ids, lens.iter().sum::<usize>(), device)?;
        let mut hidden = self
            .patch_embedding
            .forward(&patches)?
            .add(&self.position_embedding.index_select(&ids, 0)?)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &lens, &self.config)?;
        }
        Ok((self.post_layernorm.forward(&hidden)?, lens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_rows_match_the_spec() {
        assert_eq!(
            bucket_ids(27, 70),
            vec![
                0, 2, 5, 7, 10, 12, 15, 18, 20, 23, 25, 28, 31, 33, 36, 38, 41, 44, 46, 49, 51, 54,
                57, 59, 62, 64, 67
            ]
        );
        assert_eq!(
            bucket_ids(46, 70),
            vec![
                0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27, 28, 30, 31,
                33, 35, 36, 38, 39, 41, 42, 44, 45, 47, 48, 50, 51, 53, 54, 56, 57, 59, 60, 62, 63,
                65, 66, 68
            ]
        );
        assert_eq!(
            bucket_ids(49, 70),
            vec![
                0, 1, 2, 4, 5, 7, 8, 9, 11, 12, 14, 15, 17, 18, 19, 21, 22, 24, 25, 27, 28, 30, 31,
                32, 34, 35, 37, 38, 39, 41, 42, 44, 45, 47, 48, 49, 51, 52, 54, 55, 57, 58, 60, 61,
                62, 64, 65, 67, 68
            ]
        );
        assert_eq!(bucket_ids(70, 70), (0..70).collect::<Vec<u32>>());
    }

    #[test]
    fn position_ids_are_row_major_over_the_table() {
        let ids = position_ids(2, 3, 4);
        // rows: n=2 on 4 buckets -> [0, 2]; cols: n=3 -> [0, 1, 2].
        assert_eq!(ids, vec![0, 1, 2, 8, 9, 10]);
    }

    #[test]
    fn patchify_orders_channel_then_y_then_x() {
        let (h, w, p) = (4usize, 6usize, 2usize);
        let data: Vec<f32> = (0..3 * h * w).map(|i| i as f32).collect();
        let image = ProcessedImage {
            height: h + 1,
            width: w + 1,
            data: vec![0.0; 3 * (h + 1) * (w + 1)],
        };
        assert_eq!(patch_grid(&image, p), (2, 3));
        let image = ProcessedImage {
            height: h,
            width: w,
            data,
        };
        let t = patchify(&image, p, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[6, 12]);
        let rows = t.to_vec2::<f32>().unwrap();
        // Patch (1, 2): rows 2..4, cols 4..6 of each channel plane.
        let plane = (h * w) as f32;
        let expected: Vec<f32> = (0..3)
            .flat_map(|c| [16.0, 17.0, 22.0, 23.0].map(|v| v + c as f32 * plane))
            .collect();
        assert_eq!(rows[5], expected);
    }
}
