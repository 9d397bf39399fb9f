//! Building blocks of the towers: linear layers, norms that compute their statistics in f32
//! (as PyTorch does under bf16), SwiGLU and grouped-query attention. Each layer is built from
//! its config values and the weights view of its own subtree.
//!
//! Every op here works on 2-D `(tokens, features)` matrices of one sequence or of several
//! sequences packed end to end, never on padded batches: a row's result then depends only on
//! that row, which is what makes generation independent of the batch a request lands in.

use candle_core::{CpuStorage, DType, Layout, Module, Result, Tensor, D};

use crate::config::Activation;
use crate::decode_product::{self, decode_product};
use crate::error::LoadError;
use crate::flash::{heads_last, FlashAttention, Masking};
use crate::weights::Weights;

/// The values of a CPU custom op's input (`op` names it in the error): the op's kernels take
/// contiguous f32 slices.
pub fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: contiguous f32 inputs expected"),
    }
}

/// What the rows a layer multiplies are, which picks the CPU product they go through. Each
/// kind keeps every row's bits independent of the rows computed with it, and a request's rows
/// are always of the same kind at the same point of its generation, so its tokens do not
/// depend on its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Tokens packed end to end (prompts, image patches, latents), often hundreds: `gemm`
    /// through [`matmul_rows`].
    Packed,
    /// One new token per sequence of a decoding step, a few rows by every weight matrix of
    /// the decoder: on the CPU in f32 [`decode_product`], which streams each weight once
    /// instead of repacking it per call; elsewhere as [`Rows::Packed`].
    Decode,
}

/// `x · Wᵀ (+ b)`, through [`matmul_rows`] or, for decoding rows, [`decode_product`].
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `weight` `(out, in)` and, when `bias`, `bias` `(out)` of the view `w`.
    pub fn load(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> std::result::Result<Self, LoadError> {
        Ok(Linear {
            weight: w.get("weight", (out_dim, in_dim))?,
            bias: if bias {
                Some(w.get("bias", out_dim)?)
            } else {
                None
            },
        })
    }

    /// The layers `names` of the view `w`, all reading `in_dim` features, as one layer whose
    /// outputs are theirs side by side (`out_dims` each, in order).
    pub fn stacked(
        w: &Weights,
        names: &[&str],
        in_dim: usize,
        out_dims: &[usize],
        bias: bool,
    ) -> std::result::Result<Self, LoadError> {
        let parts = names
            .iter()
            .zip(out_dims)
            .map(|(name, &out)| Linear::load(&w.pp(name), in_dim, out, bias))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let stack = |ts: Vec<&Tensor>| Tensor::cat(&ts, 0).map_err(LoadError::Device);
        let weight = stack(parts.iter().map(|p| &p.weight).collect())?;
        let bias = match bias {
            true => Some(stack(
                parts.iter().filter_map(|p| p.bias.as_ref()).collect(),
            )?),
            false => None,
        };
        Ok(Linear { weight, bias })
    }

    /// The layer of output features `start..start + len` alone, sharing these weights.
    pub fn rows(&self, start: usize, len: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.weight.narrow(0, start, len)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.narrow(0, start, len))
                .transpose()?,
        })
    }

    /// The device its weights are on.
    pub fn device(&self) -> &candle_core::Device {
        self.weight.device()
    }

    /// A layer from tensors already loaded (a reshaped conv, a tied embedding table).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }
}

impl Linear {
    /// The layer over `xs` `(…, in)`, rows of the kind `rows`.
    pub fn forward_rows(&self, xs: &Tensor, rows: Rows) -> Result<Tensor> {
        let out = if rows == Rows::Decode && decode_product::applies(xs, &self.weight) {
            decode_product(xs, &self.weight)?
        } else {
            matmul_rows(xs, &self.weight.t()?)?
        };
        match &self.bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_rows(xs, Rows::Packed)
    }
}

/// `weight · cast(x32 · rsqrt(mean(x32²) + eps))`, as `Idefics2RMSNorm` / `MistralRMSNorm`.
///
/// On a GPU the cast part is candle's fused kernel with a weight of ones (it rounds once, after
/// its own multiply by the weight, and transformers rounds before multiplying): two kernels
/// instead of nine per norm, the decode step's largest share of launches. The CPU keeps the
/// op-by-op form the fixture references were compared with.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    ones: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `weight` `(dim)` of the view `w`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> std::result::Result<Self, LoadError> {
        let weight = w.get("weight", dim)?;
        let ones = weight.ones_like().map_err(LoadError::Device)?;
        Ok(RmsNorm { weight, ones, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let normalized = if xs.device().is_cpu() {
            let x32 = xs.to_dtype(DType::F32)?;
            let inv = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
                .sqrt()?
                .recip()?;
            x32.broadcast_mul(&inv)?.to_dtype(xs.dtype())?
        } else {
            candle_nn::ops::rms_norm(&xs.contiguous()?, &self.ones, self.eps as f32)?
        };
        normalized.broadcast_mul(&self.weight)
    }
}

/// LayerNorm with biased variance, computed (affine included) in f32 like PyTorch's kernel,
/// which rounds once, at the end.
///
/// On a GPU that is candle's fused kernel (f32 statistics, one rounding): one launch instead
/// of eight per norm, 54 norms per crop pass through SigLIP. The CPU keeps the op-by-op form
/// the fixture references were compared with.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Weight and bias: in f32 on the CPU (the op-by-op form), in the model's dtype elsewhere
    /// (the fused kernel takes them in the input's dtype).
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// `weight` and `bias` `(dim)` of the view `w`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> std::result::Result<Self, LoadError> {
        let (mut weight, mut bias) = (w.get("weight", dim)?, w.get("bias", dim)?);
        if weight.device().is_cpu() {
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).map_err(LoadError::Device);
            (weight, bias) = (f32(&weight)?, f32(&bias)?);
        }
        Ok(LayerNorm { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !xs.device().is_cpu() {
            let eps = self.eps as f32;
            return candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, eps);
        }
        let dtype = xs.dtype();
        let x32 = xs.to_dtype(DType::F32)?;
        let centered = x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(dtype)
    }
}

/// `down(act(gate(x)) · up(x))`, without biases (Mistral MLP, Idefics2 connector MLPs). The
/// gate and up projections are one matrix (their weights stacked at load), so the input goes
/// through one matmul instead of two.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate_up: Linear,
    hidden: usize,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    /// `gate_proj`, `up_proj` and `down_proj` of the view `w`.
    pub fn load(
        w: &Weights,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        act: Activation,
    ) -> std::result::Result<Self, LoadError> {
        Ok(GatedMlp {
            gate_up: Linear::stacked(
                w,
                &["gate_proj", "up_proj"],
                in_dim,
                &[hidden, hidden],
                false,
            )?,
            hidden,
            down: Linear::load(&w.pp("down_proj"), hidden, out_dim, false)?,
            act,
        })
    }
}

impl GatedMlp {
    /// The MLP over `xs`, rows of the kind `rows`.
    pub fn forward_rows(&self, xs: &Tensor, rows: Rows) -> Result<Tensor> {
        let gate_up = self.gate_up.forward_rows(xs, rows)?;
        let gate = gate_up.narrow(D::Minus1, 0, self.hidden)?;
        let up = gate_up.narrow(D::Minus1, self.hidden, self.hidden)?;
        self.down
            .forward_rows(&(self.act.apply(&gate)? * up)?, rows)
    }
}

impl Module for GatedMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_rows(xs, Rows::Packed)
    }
}

/// The four projections of a self-attention block. The output one is `o_proj` in the Mistral
/// and perceiver checkpoints and `out_proj` in SigLIP's, hence `out_name`. Queries, keys and
/// values are one matrix (stacked at load): one matmul over the input instead of three.
#[derive(Debug, Clone)]
pub struct AttentionProjections {
    qkv: Linear,
    /// The query rows of `qkv`, and its key and value rows: views of the same weights, for
    /// blocks whose queries and keys read different inputs.
    q: Linear,
    kv: Linear,
    kv_dim: usize,
    /// Output.
    pub o: Linear,
}

impl AttentionProjections {
    /// `q_proj`, `k_proj`, `v_proj` and `out_name` of the view `w`.
    pub fn load(
        w: &Weights,
        out_name: &str,
        hidden: usize,
        q_dim: usize,
        kv_dim: usize,
        bias: bool,
    ) -> std::result::Result<Self, LoadError> {
        let names = ["q_proj", "k_proj", "v_proj"];
        let qkv = Linear::stacked(w, &names, hidden, &[q_dim, kv_dim, kv_dim], bias)?;
        Ok(AttentionProjections {
            q: qkv.rows(0, q_dim).map_err(LoadError::Device)?,
            kv: qkv.rows(q_dim, 2 * kv_dim).map_err(LoadError::Device)?,
            qkv,
            kv_dim,
            o: Linear::load(&w.pp(out_name), q_dim, hidden, bias)?,
        })
    }

    /// The `self_attn` block of a Mistral / Llama layer under the layer view `layer` (the
    /// decoder's and the Idefics2 perceiver's): `o_proj`, no biases, `heads` query and
    /// `kv_heads` key/value heads of `head_dim`.
    pub fn grouped(
        layer: &Weights,
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> std::result::Result<Self, LoadError> {
        let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
        Self::load(
            &layer.pp("self_attn"),
            "o_proj",
            hidden,
            q_dim,
            kv_dim,
            false,
        )
    }

    /// Queries, keys and values `(tokens, dim)` of `x` `(tokens, hidden)`, in one matmul.
    pub fn qkv(&self, x: &Tensor, rows: Rows) -> Result<(Tensor, Tensor, Tensor)> {
        let qkv = self.qkv.forward_rows(x, rows)?;
        let (q, kv) = (qkv.dim(D::Minus1)? - 2 * self.kv_dim, self.kv_dim);
        Ok((
            qkv.narrow(D::Minus1, 0, q)?,
            qkv.narrow(D::Minus1, q, kv)?,
            qkv.narrow(D::Minus1, q + kv, kv)?,
        ))
    }

    /// Queries of `x` alone.
    pub fn q(&self, x: &Tensor) -> Result<Tensor> {
        self.q.forward(x)
    }

    /// Keys and values of `x` alone, in one matmul.
    pub fn kv(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = self.kv.forward(x)?;
        Ok((
            kv.narrow(D::Minus1, 0, self.kv_dim)?,
            kv.narrow(D::Minus1, self.kv_dim, self.kv_dim)?,
        ))
    }
}

/// Splits `(tokens, heads·dim)` into `(heads, tokens, dim)`, contiguous.
pub fn split_heads(xs: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let tokens = xs.dim(0)?;
    xs.reshape((tokens, heads, head_dim))?
        .transpose(0, 1)?
        .contiguous()
}

/// Outputs (rows × columns) from which the CPU matmul backend (`gemm`) runs its general kernel
/// whatever the number of rows. Below, it switches to dot-product or matrix-vector kernels that
/// order their sums differently, so a row's result would depend on how many rows came with it.
const GENERAL_KERNEL_MIN_OUTPUTS: usize = 16 * 16 + 1;

/// When neither output side exceeds this, `gemm` cuts the summed dimension into blocks of
/// [`SMALL_PRODUCT_BLOCK`] instead of its usual equal blocks, which regroups sums longer than
/// that block.
const SMALL_PRODUCT_SIDE: usize = 64;
const SMALL_PRODUCT_BLOCK: usize = 512;

/// `a · b` over the last two dimensions, on the CPU with `a` padded with zero rows (then
/// dropped) until `gemm` picks the kernel and blocking it uses for any number of rows: a
/// request decoding alone, a short question after a shared prefix, or one crop of a page must
/// give the same bits as in a big batch. cuBLAS picks kernels by shape whatever the padding, so
/// other devices multiply as they are (padding there would only add a copy per product).
fn matmul_rows(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !a.device().is_cpu() {
        return a.matmul(b);
    }
    let rows_dim = a.rank() - 2;
    let rows = a.dim(rows_dim)?;
    let cols = b.dim(D::Minus1)?;
    let mut min_rows = GENERAL_KERNEL_MIN_OUTPUTS.div_ceil(cols).max(2);
    if cols <= SMALL_PRODUCT_SIDE && a.dim(D::Minus1)? > SMALL_PRODUCT_BLOCK {
        min_rows = min_rows.max(SMALL_PRODUCT_SIDE + 1);
    }
    if rows >= min_rows {
        return a.matmul(b);
    }
    let mut pad_shape = a.dims().to_vec();
    pad_shape[rows_dim] = min_rows - rows;
    let pad = Tensor::zeros(pad_shape, a.dtype(), a.device())?;
    Tensor::cat(&[a, &pad], rows_dim)?
        .matmul(b)?
        .narrow(rows_dim, 0, rows)
}

/// `q · kᵀ · scale` in f32 (eager attention upcasts the scores and the softmax).
fn scores(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    matmul_rows(q, &k.t()?)?.to_dtype(DType::F32)? * scale
}

/// `softmax(scores) · v`, the probabilities cast to `v`'s dtype.
fn weighted_values(scores: &Tensor, v: &Tensor) -> Result<Tensor> {
    let probs = candle_nn::ops::softmax_last_dim(scores)?.to_dtype(v.dtype())?;
    matmul_rows(&probs, v)
}

/// Tokens `offset..offset + len` of a `(heads, tokens, d)` tensor, contiguous.
pub fn token_range(t: &Tensor, offset: usize, len: usize) -> Result<Tensor> {
    t.narrow(1, offset, len)?.contiguous()
}

/// Runs `f(index, offset, len)` for each of the consecutive row segments of the given lengths
/// and concatenates the results along the rows: attention per sequence over packed sequences.
pub fn per_segment(
    lens: &[usize],
    mut f: impl FnMut(usize, usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(lens.len());
    let mut offset = 0;
    for (index, &len) in lens.iter().enumerate() {
        parts.push(f(index, offset, len)?);
        offset += len;
    }
    Tensor::cat(&parts, 0)
}

/// Scaled dot-product attention for one sequence with grouped key/value heads.
///
/// `q` is `(heads, t, d)`, `k` and `v` are `(kv_heads, L, d)`; query head `h` uses kv head
/// `h / (heads / kv_heads)`. `mask` is an additive `(t, L)` f32 mask. Returns `(t, heads·d)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (heads, t, d) = q.dims3()?;
    let kv_heads = k.dim(0)?;
    let len = k.dim(1)?;
    let groups = heads / kv_heads;
    // Query heads that share a kv head become one longer query block: no kv repeat needed.
    let q = q.reshape((kv_heads, groups * t, d))?;
    let scores = scores(&q, k, scale)?;
    let scores = match mask {
        Some(m) => scores
            .reshape((kv_heads, groups, t, len))?
            .broadcast_add(m)?
            .reshape((kv_heads, groups * t, len))?,
        None => scores,
    };
    weighted_values(&scores, v)?
        .reshape((heads, t, d))?
        .transpose(0, 1)?
        .reshape((t, heads * d))
}

/// How a layer's projections split into attention heads.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key and value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Size of each head.
    pub head_dim: usize,
}

/// Attention without a mask per sequence of packed projections: `q` is `(Σ queries, heads·d)`,
/// `k` and `v` are `(Σ keys, kv_heads·d)`, sequence `i` has `queries[i]` and `keys[i]` rows.
/// Returns `(Σ queries, heads·d)`. One FlashAttention call for all sequences where the build
/// has the kernel, else [`attention`] sequence by sequence (the CPU's batch-independent path).
pub fn unmasked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: Heads,
    queries: &[usize],
    keys: &[usize],
    scale: f64,
) -> Result<Tensor> {
    let Heads {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    if let Some(flash) = FlashAttention::new(q.device(), q.dtype(), head_dim, Masking::Full) {
        let (q, k, v) = (
            heads_last(q, heads, head_dim)?,
            heads_last(k, kv_heads, head_dim)?,
            heads_last(v, kv_heads, head_dim)?,
        );
        return flash.attention(&q, &k, &v, (queries, keys), scale);
    }
    let q = split_heads(q, heads, head_dim)?;
    let k = split_heads(k, kv_heads, head_dim)?;
    let v = split_heads(v, kv_heads, head_dim)?;
    let mut query_offset = 0;
    per_segment(keys, |i, offset, len| {
        let qs = token_range(&q, query_offset, queries[i])?;
        query_offset += queries[i];
        attention(
            &qs,
            &token_range(&k, offset, len)?,
            &token_range(&v, offset, len)?,
            scale,
            None,
        )
    })
}

/// [`attention`] of one new query per sequence for a batch of sequences at once.
///
/// `q` is `(heads, batch, d)`, `k` and `v` are `(batch, kv_heads, L, d)` (views into a
/// [`crate::kv_cache::BatchCache`]), `mask` an additive `(batch, 1, 1, L)` f32 mask. Each
/// sequence goes through the same matmul shapes as alone. Returns `(batch, heads·d)`.
pub fn batched_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: &Tensor,
) -> Result<Tensor> {
    let (heads, batch, d) = q.dims3()?;
    let kv_heads = k.dim(1)?;
    let q = q
        .transpose(0, 1)?
        .reshape((batch, kv_heads, heads / kv_heads, d))?;
    let scores = scores(&q, k, scale)?.broadcast_add(mask)?;
    weighted_values(&scores, v)?.reshape((batch, heads * d))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn a_rows_result_does_not_depend_on_the_rows_computed_with_it() {
        for (k, n) in [
            (64, 32),
            (64, 64),
            (16, 70),
            (128, 643),
            (96, 256),
            (588, 48),
            (600, 70),
        ] {
            let x = Tensor::randn(0f32, 1.0, (100, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let linear = Linear::new(w, None);
            let all = linear.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            for m in 1..100 {
                let some = linear.forward(&x.narrow(0, 0, m).unwrap()).unwrap();
                assert_eq!(some.to_vec2::<f32>().unwrap(), all[..m], "{m} of {k}x{n}");
            }
        }
    }

    /// The decoding product at the input widths the decoders multiply (the fixtures' 32 to
    /// 160, the Idefics1 benchmark's 2048 and 5504, idefics-9b's 4096 and 11008, odd ones for
    /// the tail of the sums), with output counts that split into one task or several: a row's
    /// bits are the same alone, and first, last or anywhere in a batch of up to 11 rows
    /// (beyond two tiles of rows that share weight loads); and they are the product's.
    #[test]
    fn a_decoding_rows_result_does_not_depend_on_the_rows_computed_with_it() {
        let rows = 11;
        for (k, n) in [
            (32, 96),
            (48, 32),
            (64, 643),
            (160, 64),
            (37, 70),
            (2048, 48),
            (4096, 24),
            (5504, 20),
            (11008, 12),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let linear = Linear::new(w, None);
            let decode = |x: &Tensor| {
                let out = linear.forward_rows(x, Rows::Decode).unwrap();
                out.to_vec2::<f32>().unwrap()
            };
            let all = decode(&x);
            for m in 1..rows {
                let first = decode(&x.narrow(0, 0, m).unwrap());
                assert_eq!(first, all[..m], "first {m} of {k}x{n}");
                let last = decode(&x.narrow(0, rows - m, m).unwrap());
                assert_eq!(last, all[rows - m..], "last {m} of {k}x{n}");
            }
            let packed = linear.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            for (got, want) in all.iter().flatten().zip(packed.iter().flatten()) {
                let scale = (k as f32).sqrt();
                assert!(
                    (got - want).abs() <= 1e-5 * scale,
                    "{got} vs {want}, {k}x{n}"
                );
            }
        }
    }
}
