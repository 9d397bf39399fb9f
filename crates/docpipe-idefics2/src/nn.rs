//! Building blocks shared by the three towers: linear layers, norms that compute their
//! statistics in f32 (as PyTorch does under bf16), SwiGLU and grouped-query attention.
//!
//! Every op here works on 2-D `(tokens, features)` matrices of one sequence or of several
//! sequences packed end to end, never on padded batches: a row's result then depends only on
//! that row, which is what makes generation independent of the batch a request lands in.

use candle_core::{DType, Module, Result, Tensor, D};

use crate::config::Activation;
use crate::error::LoadError;
use crate::weights::Weights;

/// `x · Wᵀ (+ b)`. A single-row input is computed as two identical rows: the matmul backend
/// switches to a matrix-vector kernel (with another summation order) for one row, and a
/// request decoding alone must give the same bits as in a batch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(
        w: &Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> std::result::Result<Self, LoadError> {
        Ok(Linear {
            weight: w.get(&format!("{prefix}.weight"), (out_dim, in_dim))?,
            bias: if bias {
                Some(w.get(&format!("{prefix}.bias"), out_dim)?)
            } else {
                None
            },
        })
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let rows = xs.dim(0)?;
        let out = if rows == 1 {
            Tensor::cat(&[xs, xs], 0)?
                .matmul(&self.weight.t()?)?
                .narrow(0, 0, 1)?
        } else {
            xs.matmul(&self.weight.t()?)?
        };
        match &self.bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

/// `weight · cast(x32 · rsqrt(mean(x32²) + eps))`, as `Idefics2RMSNorm` / `MistralRMSNorm`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(
        w: &Weights,
        name: &str,
        dim: usize,
        eps: f64,
    ) -> std::result::Result<Self, LoadError> {
        Ok(RmsNorm {
            weight: w.get(name, dim)?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x32 = xs.to_dtype(DType::F32)?;
        let inv = (x32.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        x32.broadcast_mul(&inv)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

/// LayerNorm with biased variance, computed (affine included) in f32 like PyTorch's kernel.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(
        w: &Weights,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> std::result::Result<Self, LoadError> {
        let f32 = |t: Tensor| {
            t.to_dtype(DType::F32)
                .map_err(|e| LoadError::Device(e.to_string()))
        };
        Ok(LayerNorm {
            weight: f32(w.get(&format!("{prefix}.weight"), dim)?)?,
            bias: f32(w.get(&format!("{prefix}.bias"), dim)?)?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
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

/// `down(act(gate(x)) · up(x))`, without biases (Mistral MLP, Idefics2 connector MLPs).
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn load(
        w: &Weights,
        prefix: &str,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        act: Activation,
    ) -> std::result::Result<Self, LoadError> {
        Ok(GatedMlp {
            gate: Linear::load(w, &format!("{prefix}.gate_proj"), in_dim, hidden, false)?,
            up: Linear::load(w, &format!("{prefix}.up_proj"), in_dim, hidden, false)?,
            down: Linear::load(w, &format!("{prefix}.down_proj"), hidden, out_dim, false)?,
            act,
        })
    }
}

impl Module for GatedMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = (self.act.apply(&self.gate.forward(xs)?)? * self.up.forward(xs)?)?;
        self.down.forward(&gated)
    }
}

/// The four projections of a self-attention block. The output one is `o_proj` in the Mistral
/// and perceiver checkpoints and `out_proj` in SigLIP's, hence `out_name`.
#[derive(Debug, Clone)]
pub struct AttentionProjections {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
}

impl AttentionProjections {
    pub fn load(
        w: &Weights,
        prefix: &str,
        out_name: &str,
        hidden: usize,
        q_dim: usize,
        kv_dim: usize,
        bias: bool,
    ) -> std::result::Result<Self, LoadError> {
        Ok(AttentionProjections {
            q: Linear::load(w, &format!("{prefix}.q_proj"), hidden, q_dim, bias)?,
            k: Linear::load(w, &format!("{prefix}.k_proj"), hidden, kv_dim, bias)?,
            v: Linear::load(w, &format!("{prefix}.v_proj"), hidden, kv_dim, bias)?,
            o: Linear::load(w, &format!("{prefix}.{out_name}"), q_dim, hidden, bias)?,
        })
    }
}

/// Splits `(tokens, heads·dim)` into `(heads, tokens, dim)`, contiguous.
pub fn split_heads(xs: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let tokens = xs.dim(0)?;
    xs.reshape((tokens, heads, head_dim))?
        .transpose(0, 1)?
        .contiguous()
}

/// Scaled dot-product attention for one sequence with grouped key/value heads.
///
/// `q` is `(heads, t, d)`, `k` and `v` are `(kv_heads, L, d)`; query head `h` uses kv head
/// `h / (heads / kv_heads)`. `mask` is an additive `(t, L)` f32 mask. Scores and softmax are
/// f32 (eager attention upcasts the softmax). Returns `(t, heads·d)`.
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
    let dtype = q.dtype();
    // Query heads that share a kv head become one longer query block: no kv repeat needed.
    let q = q.reshape((kv_heads, groups * t, d))?;
    let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
    let scores = match mask {
        Some(m) => scores
            .reshape((kv_heads, groups, t, len))?
            .broadcast_add(m)?
            .reshape((kv_heads, groups * t, len))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs
        .matmul(v)?
        .reshape((heads, t, d))?
        .transpose(0, 1)?
        .reshape((t, heads * d))
}
