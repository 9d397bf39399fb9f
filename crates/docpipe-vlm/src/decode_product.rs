//! The product of a decoding step's rows with a weight matrix, on the CPU.
//!
//! A decoding step multiplies a few rows (one new token per sequence) by every weight matrix of
//! the decoder. Through `gemm`, as `x · Wᵀ`, each call first repacks the transposed weight,
//! reading and rewriting all of it to multiply a handful of rows: that packing was 64% of a
//! one-request Idefics1 run (docs/benchmarks.md, "Idefics1 on CPU"). Here each output is the dot
//! product of an input row with a weight row as stored; each weight row is read once per call,
//! for all the rows, while it is in cache.
//!
//! Every `(row, output)` pair is summed the same way whatever the other rows are: the same
//! [`LANES`] running sums over the input in order, the same pairwise reduction, the same tail.
//! Rows and weight rows sharing loads in register tiles ([`ROW_TILE`], [`W_TILE`]) or not,
//! outputs split among threads one way or another: none of it changes what is added to what,
//! or in which order (Rust never fuses a multiply and an add on its own). So a request
//! decoding alone and the same request in a batch of any size get the same bits, as `nn`'s
//! padded `gemm` products do for packed rows (prompts, image patches), which keep `gemm`: with
//! hundreds of rows it is the faster.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::cpu_f32;

/// Running sums of one dot product: one AVX register, two SSE ones.
const LANES: usize = 8;

/// Input rows that share each load of a weight row: a tile of them times two weight rows is 8
/// running sums of [`LANES`], half the AVX registers.
const ROW_TILE: usize = 4;

/// Weight rows taken together: the input rows left over from the tiles go against this many at
/// once, so that even a single row keeps several sums in flight.
const W_TILE: usize = 4;

/// Multiply-adds below which a share of the outputs is not worth a task of its own.
const MIN_TASK_WORK: usize = 1 << 16;

/// Whether [`decode_product`] takes `x · weightᵀ`: both f32 and on the CPU. Other dtypes and
/// devices keep the general product (cuBLAS handles few rows well).
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    f32_cpu(x) && f32_cpu(weight)
}

/// `x · weightᵀ` for `x` `(…, in)` and `weight` `(out, in)`, both f32 on the CPU ([`applies`]):
/// `(…, out)`.
pub fn decode_product(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &DecodeProduct)
}

struct DecodeProduct;

impl CustomOp2 for DecodeProduct {
    fn name(&self) -> &'static str {
        "decode-product"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = w_layout.shape().dims2()?;
        let mut dims = x_layout.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!(
                "decode product: {:?} times the transpose of {:?}",
                x_layout.shape(),
                w_layout.shape()
            );
        }
        let (x, w) = (
            cpu_f32(x, x_layout, self.name())?,
            cpu_f32(w, w_layout, self.name())?,
        );
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        // Outputs by weight row, `(n, rows)`, then transposed.
        let mut by_output = vec![0f32; n * rows];
        // Tasks of equal shares of the outputs, a few per thread, none too small.
        let threads = rayon::current_num_threads();
        let per_task = n
            .div_ceil(8 * threads)
            .max(MIN_TASK_WORK.div_ceil((k * rows).max(1)))
            .max(1);
        if rows > 0 && k > 0 {
            let xs: Vec<&[f32]> = x.chunks_exact(k).collect();
            by_output
                .par_chunks_mut(per_task * rows)
                .enumerate()
                .for_each(|(task, out)| {
                    let w = &w[task * per_task * k..];
                    products(&xs, w, k, out);
                });
        }
        let out = match rows {
            1 => by_output,
            _ => (0..rows * n)
                .map(|i| by_output[(i % n) * rows + i / n])
                .collect(),
        };
        *dims.last_mut().unwrap() = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `out[j · rows + r] = xs[r] · w[j · k..(j + 1) · k]` for the `out.len() / rows` weight rows
/// at the start of `w`, with AVX when the CPU has it (the same sums either way).
fn products(xs: &[&[f32]], w: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked above.
        return unsafe { products_avx(xs, w, k, out) };
    }
    products_any(xs, w, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn products_avx(xs: &[&[f32]], w: &[f32], k: usize, out: &mut [f32]) {
    products_any(xs, w, k, out)
}

#[inline(always)]
fn products_any(xs: &[&[f32]], w: &[f32], k: usize, out: &mut [f32]) {
    let rows = xs.len();
    for (w, out) in w.chunks(W_TILE * k).zip(out.chunks_mut(W_TILE * rows)) {
        // The tile's weight rows on the stack: this loop runs once per 4 outputs of every
        // product of every step.
        let mut ws: [&[f32]; W_TILE] = [&[]; W_TILE];
        let count = out.len() / rows;
        for (slot, row) in ws.iter_mut().zip(w.chunks_exact(k).take(count)) {
            *slot = row;
        }
        tile_products(xs, &ws[..count], out);
    }
}

/// `out[f · rows + r] = xs[r] · ws[f]` for up to [`W_TILE`] weight rows: [`ROW_TILE`] input
/// rows times two weight rows at a time, and the input rows left over times all of them, so
/// that even one input row has several sums in flight.
#[inline(always)]
fn tile_products(xs: &[&[f32]], ws: &[&[f32]], out: &mut [f32]) {
    let rows = xs.len();
    let mut put = |f0: usize, r0: usize, sums: &[&[f32]]| {
        for (f, sums) in sums.iter().enumerate() {
            out[(f0 + f) * rows + r0..][..sums.len()].copy_from_slice(sums);
        }
    };
    let mut tiles = xs.chunks_exact(ROW_TILE);
    for (t, tile) in (&mut tiles).enumerate() {
        let tile: [&[f32]; ROW_TILE] = tile.try_into().unwrap();
        for (p, pair) in ws.chunks(2).enumerate() {
            match pair {
                [a, b] => put(
                    2 * p,
                    t * ROW_TILE,
                    &dots(tile, [*a, *b]).each_ref().map(|s| &s[..]),
                ),
                _ => put(2 * p, t * ROW_TILE, &[&dots(tile, [pair[0]])[0]]),
            }
        }
    }
    let done = rows - tiles.remainder().len();
    for (i, x) in tiles.remainder().iter().enumerate() {
        match <[&[f32]; W_TILE]>::try_from(ws) {
            Ok(ws) => put(0, done + i, &dots([*x], ws).each_ref().map(|s| &s[..])),
            Err(_) => {
                for (f, w) in ws.iter().enumerate() {
                    put(f, done + i, &[&dots([*x], [*w])[0]]);
                }
            }
        }
    }
}

/// The dot products of `R` rows with `F` weight rows: for each pair, [`LANES`] running sums
/// over the input in order, summed pairwise, plus the remainder's products in order.
#[inline(always)]
fn dots<const F: usize, const R: usize>(xs: [&[f32]; R], ws: [&[f32]; F]) -> [[f32; R]; F] {
    let chunks = ws[0].len() / LANES;
    let x_chunks = xs.map(|x| &x.as_chunks::<LANES>().0[..chunks]);
    let w_chunks = ws.map(|w| &w.as_chunks::<LANES>().0[..chunks]);
    let mut acc = [[[0f32; LANES]; R]; F];
    for c in 0..chunks {
        for (acc, w) in acc.iter_mut().zip(&w_chunks) {
            let w = &w[c];
            for (acc, x) in acc.iter_mut().zip(&x_chunks) {
                let x = &x[c];
                for l in 0..LANES {
                    acc[l] += x[l] * w[l];
                }
            }
        }
    }
    let mut out = [[0f32; R]; F];
    for ((out, acc), w) in out.iter_mut().zip(acc).zip(ws) {
        for ((out, mut acc), x) in out.iter_mut().zip(acc).zip(xs) {
            let mut width = LANES;
            while width > 1 {
                width /= 2;
                for l in 0..width {
                    acc[l] += acc[l + width];
                }
            }
            let tail = x[chunks * LANES..].iter().zip(&w[chunks * LANES..]);
            *out = tail.fold(acc[0], |sum, (x, w)| sum + x * w);
        }
    }
    out
}
