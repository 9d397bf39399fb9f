//! `softmax(q · kᵀ · scale) · v` over a batch of small independent problems: DaViT's windows ×
//! heads (144 tokens of 32 channels each) and its channel groups (32 channels over every token).
//!
//! candle multiplies a batch of matrices one after the other, each product spread over every
//! core. For a page's thousand 144 × 144 window products the synchronisation costs more than
//! the arithmetic: the first stage's window attention took 560 ms of a 768² page, most of it
//! waiting. On the CPU the problems run side by side instead, each on one core, through the
//! same operations in the same order as the tensor path (gemm with the same strides, the scale,
//! candle's softmax reductions), so both give the same numbers. Other devices take the tensor
//! path.

use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use docpipe_vlm::nn::cpu_f32;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// `softmax(q · kᵀ · scale) · v` for `q` `(B, Tq, D)`, `k` `(B, Tk, D)`, `v` `(B, Tk, Dv)`:
/// `(B, Tq, Dv)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if f32_cpu(q) && f32_cpu(k) && f32_cpu(v) {
        let op = ProblemsSideBySide {
            scale: scale as f32,
        };
        q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
    } else {
        tensor_path(q, k, v, scale)
    }
}

fn tensor_path(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

/// The CPU kernel: one problem per task, each on one core.
struct ProblemsSideBySide {
    scale: f32,
}

impl CustomOp3 for ProblemsSideBySide {
    fn name(&self) -> &'static str {
        "attention-problems-side-by-side"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, tq, d) = q_layout.shape().dims3()?;
        let (_, tk, dv) = v_layout.shape().dims3()?;
        if k_layout.shape().dims3()? != (b, tk, d) || v_layout.shape().dims3()?.0 != b {
            candle_core::bail!(
                "attention: shapes {:?}, {:?}, {:?} do not fit together",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape()
            );
        }
        let (q, k, v) = (
            cpu_f32(q, q_layout, self.name())?,
            cpu_f32(k, k_layout, self.name())?,
            cpu_f32(v, v_layout, self.name())?,
        );
        let mut out = vec![0f32; b * tq * dv];
        out.par_chunks_mut(tq * dv).enumerate().for_each_init(
            || vec![0f32; tq * tk],
            |scores, (i, out)| {
                let q = &q[i * tq * d..(i + 1) * tq * d];
                let k = &k[i * tk * d..(i + 1) * tk * d];
                let v = &v[i * tk * dv..(i + 1) * tk * dv];
                // kᵀ is `k` read with row stride 1 and column stride `d`, as candle reads a
                // transposed view.
                product(scores, q, k, (tq, tk, d), (1, d));
                for row in scores.chunks_exact_mut(tk) {
                    softmax_scaled(row, self.scale);
                }
                product(out, scores, v, (tq, dv, tk), (dv, 1));
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((b, tq, dv))))
    }
}

/// `dst = lhs · rhs` on one core for `(m, n, k)`: `dst` `m × n` and `lhs` `m × k` row-major,
/// `rhs` `k × n` read at `(row stride, column stride)`.
fn product(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k);
    assert!(m * n * k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above: every element read or written at the strides given lies in
    // its slice.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// `softmax(row · scale)` in place, as candle computes `softmax_last_dim(scores * scale)`.
fn softmax_scaled(row: &mut [f32], scale: f32) {
    for s in row.iter_mut() {
        *s *= scale;
    }
    let mut max = f32::NEG_INFINITY;
    // SAFETY: the pointer covers `row.len()` values.
    unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, row.len()) };
    for s in row.iter_mut() {
        *s = (*s - max).exp();
    }
    let mut sum = 0f32;
    // SAFETY: as above.
    unsafe { f32::vec_reduce_sum(row.as_ptr(), &mut sum, row.len()) };
    for s in row.iter_mut() {
        *s /= sum;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn side_by_side_gives_the_tensor_path_numbers() {
        let dev = Device::Cpu;
        // Window-shaped (more tokens than channels) and channel-group-shaped problems.
        for (b, tq, tk, d, dv) in [(6, 9, 9, 4, 4), (3, 4, 4, 50, 50), (2, 5, 7, 3, 6)] {
            let q = Tensor::randn(0f32, 1.0, (b, tq, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, tk, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, tk, dv), &dev).unwrap();
            let scale = (d as f64).powf(-0.5);
            let fast = attention(&q, &k, &v, scale).unwrap();
            let reference = tensor_path(&q, &k, &v, scale).unwrap();
            assert_eq!(fast.dims(), &[b, tq, dv]);
            let diff = (fast - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{b} {tq} {tk} {d} {dv}"
            );
        }
    }
}
