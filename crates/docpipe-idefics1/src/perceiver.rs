//! The perceiver resampler (`model.perceiver_resampler`, `IdeficsPerceiverResampler`): a fixed
//! set of learned latents attends, block after block, to an image's tower tokens and to
//! itself, and becomes the image tokens the decoder's cross-attention reads (64 per image in
//! the released checkpoints instead of 257).
//!
//! Each block is pre-norm attention whose keys and values are the normed context and latents
//! concatenated (optionally with LayerNorms over each head's queries and keys), then a ReLU MLP
//! with its own LayerNorm; a final LayerNorm closes the stack. No biases in the projections.

use candle_core::{Module, Result, Tensor};
use docpipe_vlm::nn::{attention, per_segment, split_heads, token_range, LayerNorm, Linear};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::PerceiverConfig;

/// PyTorch's `nn.LayerNorm` default, which the perceiver keeps.
const EPS: f64 = 1e-5;

/// `blocks.N.0`.
struct Attention {
    context_norm: LayerNorm,
    latents_norm: LayerNorm,
    qk_norms: Option<(LayerNorm, LayerNorm)>,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

/// `blocks.N.1`.
struct Mlp {
    norm: LayerNorm,
    fc: Linear,
    proj: Linear,
}

/// The resampler.
pub struct Perceiver {
    config: PerceiverConfig,
    latents: Tensor,
    blocks: Vec<(Attention, Mlp)>,
    norm: LayerNorm,
}

impl Perceiver {
    /// The resampler over tokens of width `embed_dim` from the view of
    /// `model.perceiver_resampler`.
    pub fn new(
        config: &PerceiverConfig,
        embed_dim: usize,
        w: &Weights,
    ) -> std::result::Result<Self, LoadError> {
        let d = embed_dim;
        let inner = config.resampler_n_heads * config.resampler_head_dim;
        let blocks = w.pp("blocks");
        let blocks = (0..config.resampler_depth)
            .map(|i| {
                let a = blocks.pp(i).pp(0);
                let m = blocks.pp(i).pp(1);
                let head = config.resampler_head_dim;
                let qk_norms = if config.qk_layer_norms_perceiver {
                    Some((
                        LayerNorm::load(&a.pp("q_layer_norm"), head, EPS)?,
                        LayerNorm::load(&a.pp("k_layer_norm"), head, EPS)?,
                    ))
                } else {
                    None
                };
                Ok((
                    Attention {
                        context_norm: LayerNorm::load(&a.pp("context_layer_norm"), d, EPS)?,
                        latents_norm: LayerNorm::load(&a.pp("latents_layer_norm"), d, EPS)?,
                        qk_norms,
                        q: Linear::load(&a.pp("q_proj"), d, inner, false)?,
                        k: Linear::load(&a.pp("k_proj"), d, inner, false)?,
                        v: Linear::load(&a.pp("v_proj"), d, inner, false)?,
                        out: Linear::load(&a.pp("output_proj"), inner, d, false)?,
                    },
                    // The MLP is 4 × the vision width wide in every checkpoint.
                    Mlp {
                        norm: LayerNorm::load(&m.pp("ln"), d, EPS)?,
                        fc: Linear::load(&m.pp("fc"), d, 4 * d, false)?,
                        proj: Linear::load(&m.pp("c_proj"), 4 * d, d, false)?,
                    },
                ))
            })
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        Ok(Perceiver {
            config: config.clone(),
            latents: w.get("latents", (config.resampler_n_latents, d))?,
            blocks,
            norm: LayerNorm::load(&w.pp("layer_norm"), d, EPS)?,
        })
    }

    /// The latents of `images` images whose `tokens` tower tokens each are packed in `context`:
    /// `(images × n_latents, embed_dim)`, in order.
    pub fn forward(&self, context: &Tensor, images: usize, tokens: usize) -> Result<Tensor> {
        let n = self.config.resampler_n_latents;
        let (heads, head) = (
            self.config.resampler_n_heads,
            self.config.resampler_head_dim,
        );
        let scale = (head as f64).powf(-0.5);
        let mut latents = Tensor::cat(&vec![&self.latents; images], 0)?;
        for (attn, mlp) in &self.blocks {
            let c = attn.context_norm.forward(context)?;
            let l = attn.latents_norm.forward(&latents)?;
            let split = |proj: &Linear, x: &Tensor| split_heads(&proj.forward(x)?, heads, head);
            let norm = |t: Tensor, which: usize| match &attn.qk_norms {
                Some(norms) => [&norms.0, &norms.1][which].forward(&t),
                None => Ok(t),
            };
            let q = norm(split(&attn.q, &l)?, 0)?;
            let (kc, vc) = (norm(split(&attn.k, &c)?, 1)?, split(&attn.v, &c)?);
            let (kl, vl) = (norm(split(&attn.k, &l)?, 1)?, split(&attn.v, &l)?);
            let resampled = per_segment(&vec![n; images], |i, offset, len| {
                let own = |ctx: &Tensor, lat: &Tensor| {
                    Tensor::cat(
                        &[
                            token_range(ctx, i * tokens, tokens)?,
                            token_range(lat, offset, len)?,
                        ],
                        1,
                    )
                };
                let q = token_range(&q, offset, len)?;
                attention(&q, &own(&kc, &kl)?, &own(&vc, &vl)?, scale, None)
            })?;
            latents = (attn.out.forward(&resampled)? + latents)?;
            let x = mlp.norm.forward(&latents)?;
            latents = (mlp.proj.forward(&mlp.fc.forward(&x)?.relu()?)? + latents)?;
        }
        self.norm.forward(&latents)
    }
}
