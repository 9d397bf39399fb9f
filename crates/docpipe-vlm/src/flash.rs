//! FlashAttention-2 over packed sequences on CUDA (feature `flash-attn`, candle-flash-attn).
//!
//! docpipe packs the crops of a batch end to end through the vision tower, the images through
//! the perceiver and the prompts through the decoder's prefill, with attention per sequence.
//! Without fused kernels that attention runs sequence by sequence and writes an f32 score
//! matrix per head: 16 heads × 4,900² patches of one 980-pixel crop are 1.5 GB. FlashAttention's
//! variable-length kernel takes all sequences of a layer in one call (cumulative lengths) and
//! never materializes the scores.
//!
//! Only some kernels are compiled (`flash-attn-kernels.txt` lists them; scripts/build-cuda.sh
//! builds those and stubs the rest), so [`FlashAttention::new`] gives a handle only for a
//! device, dtype, head size and masking that a built kernel serves; everything else takes the
//! per-sequence path, which also is the reference the GPU check compares against
//! (`scripts/gpu-bench.sh`). The CPU never uses this module.

use candle_core::{DType, Device, Result, Tensor};

/// How the queries of a sequence see its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masking {
    /// Every query sees every key of its sequence (vision tower, perceiver).
    Full,
    /// Query `i` of `t` sees the keys up to its own position, counted from the end of its
    /// sequence's keys (a prompt after cached prefix keys), and, with a window, only the last
    /// `window` of them (Mistral's sliding window, as `text::causal_mask`).
    Causal {
        /// Sliding window in tokens, if any.
        window: Option<usize>,
    },
}

/// A FlashAttention-2 kernel this build has, for one head size and masking; `None` from
/// [`FlashAttention::new`] means "use the per-sequence path".
#[derive(Debug, Clone, Copy)]
pub struct FlashAttention {
    #[cfg(feature = "flash-attn")]
    masking: Masking,
    /// Without the feature there is no kernel, so no handle can exist.
    #[cfg(not(feature = "flash-attn"))]
    never: std::convert::Infallible,
}

impl FlashAttention {
    /// The fused kernel for attention heads of `head_dim` on `device` in `dtype` with
    /// `masking`, if this build compiled one.
    pub fn new(device: &Device, dtype: DType, head_dim: usize, masking: Masking) -> Option<Self> {
        #[cfg(feature = "flash-attn")]
        {
            let fits = enabled()
                && device.is_cuda()
                && head_dim % 8 == 0
                && built::kernels().iter().any(|kernel| {
                    kernel.serves(dtype, head_dim, matches!(masking, Masking::Causal { .. }))
                });
            fits.then_some(FlashAttention { masking })
        }
        #[cfg(not(feature = "flash-attn"))]
        {
            let _ = (device, dtype, head_dim, masking);
            None
        }
    }

    /// Attention of packed sequences, sequence `i` having `queries[i]` query rows and `keys[i]`
    /// key rows: `q` is `(Σ queries, heads, d)`, `k` and `v` are `(Σ keys, kv_heads, d)` with
    /// grouped key/value heads as in `nn::attention`. Returns `(Σ queries, heads·d)`, the
    /// layout the output projection takes.
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (queries, keys): (&[usize], &[usize]),
        scale: f64,
    ) -> Result<Tensor> {
        #[cfg(feature = "flash-attn")]
        {
            let (total, heads, d) = q.dims3()?;
            let cumulative = |lens: &[usize]| -> Result<Tensor> {
                let mut sums = Vec::with_capacity(lens.len() + 1);
                sums.push(0u32);
                for &len in lens {
                    sums.push(sums[sums.len() - 1] + len as u32);
                }
                Tensor::new(sums, q.device())
            };
            let longest = |lens: &[usize]| lens.iter().copied().max().unwrap_or(0);
            let (left, right) = match self.masking {
                Masking::Full => (None, None),
                // `text::causal_mask` lets a query see `window` keys, its own included; the
                // kernel's left window counts the keys before its own.
                Masking::Causal { window } => (window.map(|w| w.saturating_sub(1)), Some(0)),
            };
            candle_flash_attn::flash_attn_varlen_windowed(
                &q.contiguous()?,
                &k.contiguous()?,
                &v.contiguous()?,
                &cumulative(queries)?,
                &cumulative(keys)?,
                longest(queries),
                longest(keys),
                scale as f32,
                left,
                right,
            )?
            .reshape((total, heads * d))
        }
        #[cfg(not(feature = "flash-attn"))]
        {
            let _ = (q, k, v, queries, keys, scale);
            match self.never {}
        }
    }
}

/// `DOCPIPE_FLASH_ATTN=off` turns the fused kernels off: the per-sequence path then runs on the
/// GPU too, to compare against (scripts/gpu-bench.sh) or to work around a kernel.
#[cfg(feature = "flash-attn")]
fn enabled() -> bool {
    static ENABLED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::env::var("DOCPIPE_FLASH_ATTN").map_or(true, |value| value != "off")
    });
    *ENABLED
}

/// `(tokens, heads·d)` projections as `(tokens, heads, d)`, the layout the kernels take.
pub fn heads_last(xs: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    xs.reshape((xs.dim(0)?, heads, head_dim))
}

/// Which kernels the build has; compiled for tests too, so that CI checks the list against the
/// models' head sizes without a CUDA build.
#[cfg(any(test, feature = "flash-attn"))]
mod built {
    use std::sync::LazyLock;

    use candle_core::DType;

    /// One compiled kernel file, `flash_fwd_hdim<N>_<dtype>[_causal]_sm80.cu`.
    #[derive(Debug, PartialEq)]
    pub struct Kernel {
        head_dim: usize,
        dtype: DType,
        causal: bool,
    }

    impl Kernel {
        fn parse(file: &str) -> Option<Kernel> {
            let rest = file
                .strip_prefix("flash_fwd_hdim")?
                .strip_suffix("_sm80.cu")?;
            let (rest, causal) = match rest.strip_suffix("_causal") {
                Some(rest) => (rest, true),
                None => (rest, false),
            };
            let (head_dim, dtype) = rest.split_once('_')?;
            let dtype = match dtype {
                "bf16" => DType::BF16,
                "fp16" => DType::F16,
                _ => return None,
            };
            Some(Kernel {
                head_dim: head_dim.parse().ok()?,
                dtype,
                causal,
            })
        }

        /// Whether FlashAttention's dispatch (`HEADDIM_SWITCH`: the smallest kernel head size
        /// at least `head_dim`) lands on this kernel.
        pub fn serves(&self, dtype: DType, head_dim: usize, causal: bool) -> bool {
            const SIZES: [usize; 9] = [32, 64, 96, 128, 160, 192, 224, 256, 512];
            let dispatched = SIZES.into_iter().find(|&size| head_dim <= size);
            self.dtype == dtype && self.causal == causal && dispatched == Some(self.head_dim)
        }
    }

    /// The kernels scripts/build-cuda.sh compiled: the list it read.
    pub fn kernels() -> &'static [Kernel] {
        static KERNELS: LazyLock<Vec<Kernel>> = LazyLock::new(|| {
            include_str!("../flash-attn-kernels.txt")
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(|line| {
                    Kernel::parse(line).unwrap_or_else(|| {
                        panic!("flash-attn-kernels.txt: not a kernel file: {line}")
                    })
                })
                .collect()
        });
        &KERNELS
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_listed_kernels_serve_the_head_sizes_of_the_models() {
            let serves = |dtype, head_dim, causal| {
                kernels().iter().any(|k| k.serves(dtype, head_dim, causal))
            };
            // SigLIP (72), the Idefics2 perceiver (96), Mistral and Llama (128).
            assert!(serves(DType::BF16, 72, false));
            assert!(serves(DType::BF16, 96, false));
            assert!(serves(DType::BF16, 128, true));
            assert!(serves(DType::BF16, 128, false));
            assert!(!serves(DType::BF16, 64, false));
            assert!(!serves(DType::F16, 128, true));
            assert!(!serves(DType::BF16, 96, true));
        }
    }
}
