//! The gated cross-attention block (`model.gated_cross_attn_layers.N`,
//! `IdeficsGatedCrossAttentionLayer`) that runs before every `cross_layer_interval`-th decoder
//! layer: text tokens attend to the image tokens of one image, and two tanh gates scale what
//! the attention and the MLP add to the residual stream.
//!
//! ```text
//! h = h + tanh(alpha_cross_attn) · o(attend(q_norm(q(rms(h))), k_norm(k(image)), v(image)))
//! h = h + tanh(alpha_dense) · mlp(rms(h))
//! ```
//!
//! A token attends only to the image [`crate::prompt::image_index`] gives it; a token that sees
//! no image (text before the first image, a text-only request) gets exactly zero from the
//! attention, as transformers' `cross_attention_gate` zeroes it, but still gets the gated MLP.
//! Keys and values depend only on the image, so they are computed once per image and block
//! ([`ImageKv`]) and reused for every token and decoding step.

use candle_core::{DType, Device, Module, Result, Tensor};
use docpipe_vlm::nn::{
    attention, batched_attention, per_segment, split_heads, token_range, GatedMlp, Linear, RmsNorm,
    Rows,
};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::{AlphaType, Idefics1Config};

/// One image's keys and values for one block, `(heads, image tokens, head_dim)` each.
#[derive(Debug, Clone)]
pub struct ImageKv {
    /// Keys (after `k_layer_norm` when the checkpoint has it).
    pub keys: Tensor,
    /// Values.
    pub values: Tensor,
}

/// A run of consecutive tokens of one sequence that see the same image (or none).
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// Tokens in the run.
    pub tokens: usize,
    /// What they attend to.
    pub image: Option<&'a ImageKv>,
}

/// The block.
pub struct GatedCrossAttention {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    qk_norms: Option<(RmsNorm, RmsNorm)>,
    gate_attn: Tensor,
    gate_dense: Tensor,
    post_norm: RmsNorm,
    mlp: GatedMlp,
    heads: usize,
    head_dim: usize,
}

impl GatedCrossAttention {
    /// The block of `config` from the view of `gated_cross_attn_layers.N`, reading images of
    /// width `image_dim`.
    pub fn new(
        config: &Idefics1Config,
        image_dim: usize,
        w: &Weights,
    ) -> std::result::Result<Self, LoadError> {
        let (h, eps) = (config.hidden_size, config.rms_norm_eps);
        let head_dim = config.head_dim();
        let attn = w.pp("cross_attn");
        let qk_norms = if config.qk_layer_norms {
            Some((
                RmsNorm::load(&attn.pp("q_layer_norm"), head_dim, eps)?,
                RmsNorm::load(&attn.pp("k_layer_norm"), head_dim, eps)?,
            ))
        } else {
            None
        };
        let gate = |name: &str| -> std::result::Result<Tensor, LoadError> {
            let alpha = match config.alpha_type {
                AlphaType::Float => w.get(name, 1)?,
                AlphaType::Vector => w
                    .get(name, (1, 1, h))?
                    .reshape((1, h))
                    .map_err(LoadError::Device)?,
            };
            alpha.tanh().map_err(LoadError::Device)
        };
        Ok(GatedCrossAttention {
            input_norm: RmsNorm::load(&w.pp("input_layernorm"), h, eps)?,
            q: Linear::load(&attn.pp("q_proj"), h, h, false)?,
            k: Linear::load(&attn.pp("k_proj"), image_dim, h, false)?,
            v: Linear::load(&attn.pp("v_proj"), image_dim, h, false)?,
            o: Linear::load(&attn.pp("o_proj"), h, h, false)?,
            qk_norms,
            gate_attn: gate("alpha_cross_attn")?,
            gate_dense: gate("alpha_dense")?,
            post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), h, eps)?,
            mlp: GatedMlp::load(
                &w.pp("mlp"),
                h,
                config.intermediate_size,
                h,
                config.hidden_act,
            )?,
            heads: config.num_attention_heads,
            head_dim,
        })
    }

    fn scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }

    fn norm(&self, t: Tensor, which: usize) -> Result<Tensor> {
        match &self.qk_norms {
            Some(norms) => [&norms.0, &norms.1][which].forward(&t),
            None => Ok(t),
        }
    }

    /// Keys and values of `images` images whose `tokens` image tokens each are packed in
    /// `states` (already on this block's device).
    pub fn image_kv(&self, states: &Tensor, images: usize, tokens: usize) -> Result<Vec<ImageKv>> {
        let keys = self.norm(
            split_heads(&self.k.forward(states)?, self.heads, self.head_dim)?,
            1,
        )?;
        let values = split_heads(&self.v.forward(states)?, self.heads, self.head_dim)?;
        (0..images)
            .map(|i| {
                Ok(ImageKv {
                    keys: token_range(&keys, i * tokens, tokens)?,
                    values: token_range(&values, i * tokens, tokens)?,
                })
            })
            .collect()
    }

    /// The block over packed tokens `(Σ run tokens, hidden)`.
    pub fn forward(&self, hidden: &Tensor, runs: &[Run<'_>]) -> Result<Tensor> {
        let x = self.input_norm.forward(hidden)?;
        let q = self.norm(
            split_heads(&self.q.forward(&x)?, self.heads, self.head_dim)?,
            0,
        )?;
        let lens: Vec<usize> = runs.iter().map(|r| r.tokens).collect();
        let attended = per_segment(&lens, |i, offset, len| match runs[i].image {
            Some(kv) => attention(
                &token_range(&q, offset, len)?,
                &kv.keys,
                &kv.values,
                self.scale(),
                None,
            ),
            None => Tensor::zeros(
                (len, self.heads * self.head_dim),
                hidden.dtype(),
                hidden.device(),
            ),
        })?;
        self.gated_residuals(hidden, &attended, Rows::Packed)
    }

    /// The block for one new token per row, `(rows, hidden)`, each row attending to its own
    /// image's keys and values stacked in `rows` (zeros for a row without an image, which
    /// then gets exactly zero from the attention).
    pub fn forward_step(&self, hidden: &Tensor, rows: &StackedKv) -> Result<Tensor> {
        let x = self.input_norm.forward(hidden)?;
        let q = self.norm(
            split_heads(
                &self.q.forward_rows(&x, Rows::Decode)?,
                self.heads,
                self.head_dim,
            )?,
            0,
        )?;
        let attended = batched_attention(&q, &rows.keys, &rows.values, self.scale(), &rows.mask)?;
        self.gated_residuals(hidden, &attended, Rows::Decode)
    }

    /// The output projection and MLP, with their gates, over rows of the kind `rows`.
    fn gated_residuals(&self, hidden: &Tensor, attended: &Tensor, rows: Rows) -> Result<Tensor> {
        let out = self.o.forward_rows(attended, rows)?;
        let hidden = (hidden + out.broadcast_mul(&self.gate_attn)?)?;
        let dense = self
            .mlp
            .forward_rows(&self.post_norm.forward(&hidden)?, rows)?;
        hidden + dense.broadcast_mul(&self.gate_dense)?
    }
}

/// The keys and values of a decoding batch's rows for one block: `(rows, heads, image tokens,
/// head_dim)`, and the all-visible `(rows, 1, 1, image tokens)` mask batched attention takes.
#[derive(Debug, Clone)]
pub struct StackedKv {
    keys: Tensor,
    values: Tensor,
    mask: Tensor,
}

impl StackedKv {
    /// Stacks the image of each row (`None`: zeros) from `images`, on `device`.
    pub fn new(
        images: &[ImageKv],
        rows: &[Option<usize>],
        shape: (usize, usize, usize),
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let zeros = Tensor::zeros(shape, dtype, device)?;
        let pick = |values: bool| -> Result<Tensor> {
            let parts = rows
                .iter()
                .map(|row| match row {
                    Some(i) => Ok(if values {
                        &images[*i].values
                    } else {
                        &images[*i].keys
                    }
                    .clone()),
                    None => Ok(zeros.clone()),
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&parts, 0)
        };
        Ok(StackedKv {
            keys: pick(false)?,
            values: pick(true)?,
            mask: Tensor::zeros((rows.len(), 1, 1, shape.1), DType::F32, device)?,
        })
    }

    /// Keeps only the given rows (ascending), as the decoding batch drops finished sequences.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            self.keys.device(),
        )?;
        self.keys = self.keys.index_select(&index, 0)?;
        self.values = self.values.index_select(&index, 0)?;
        self.mask = self.mask.index_select(&index, 0)?;
        Ok(())
    }
}
