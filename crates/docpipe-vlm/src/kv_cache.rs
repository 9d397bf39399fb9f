//! Keys and values of the text decoder: per sequence while a prompt is prefilled, then one
//! preallocated buffer per layer for the whole decoding batch.
//!
//! Decoding appends one token per sequence per step to every layer. With a cache per sequence
//! that costs a dozen small kernels per sequence and layer (narrow, append, copy, attention),
//! which made a GPU decode step grow by ~7 ms per sequence. [`BatchCache`] keeps all sequences
//! of a batch in `(batch, kv_heads, capacity, head_dim)` buffers instead, so that a step writes
//! the new keys of every sequence with one scatter and attends with one batched matmul pair.
//!
//! Rows are filled from position 0 and padded on the right (each sequence at its own length),
//! never on the left: a sequence's keys keep the positions they have alone, padding only
//! appends masked positions whose probabilities are exactly zero, and the sums over positions
//! group the real terms as they do without padding. That keeps a request's tokens independent
//! of its batch on CPU.

use candle_core::{Device, Result, Tensor};

/// Keys (after RoPE) and values of one sequence's tokens, per layer, each
/// `(kv_heads, tokens, head_dim)`.
#[derive(Debug, Clone)]
pub struct SequenceKv {
    /// `(keys, values)` per layer.
    pub layers: Vec<(Tensor, Tensor)>,
}

impl SequenceKv {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.dim(1).unwrap_or(0))
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys and values of a decoding batch, one `(batch, kv_heads, capacity, head_dim)` buffer
/// pair per layer, row `b` holding `lens[b]` tokens from position 0.
///
/// Rows join ([`BatchCache::extend`]) and leave ([`BatchCache::retain`]) between steps, which
/// is what continuous batching needs: a joining row is written from position 0 like any other,
/// so the positions, masks and sums of every row stay what they are alone.
#[derive(Default)]
pub struct BatchCache {
    layers: Vec<(Tensor, Tensor)>,
    lens: Vec<usize>,
    /// The most tokens each row will need: the buffers never grow past the largest.
    limits: Vec<usize>,
    capacity: usize,
}

/// Tokens reserved past the longest prompt before the first growth; growth then adds half
/// the capacity, so long generations reallocate a logarithmic number of times and short
/// answers (DocVQA) never do.
const INITIAL_HEADROOM: usize = 64;

impl BatchCache {
    /// Adds the prefilled `sequences` as rows after the present ones; row `i` will need at most
    /// `limits[i]` tokens. The buffers grow when a new prompt is longer than their capacity.
    pub fn extend(&mut self, sequences: &[SequenceKv], limits: &[usize]) -> Result<()> {
        if sequences.len() != limits.len() {
            candle_core::bail!(
                "{} sequences joined the cache with {} limits",
                sequences.len(),
                limits.len()
            );
        }
        let Some(first) = sequences.first() else {
            return Ok(());
        };
        let longest = sequences.iter().map(SequenceKv::len).max().unwrap_or(0);
        let limit = limits
            .iter()
            .chain(&self.limits)
            .copied()
            .max()
            .unwrap_or(0);
        if longest >= self.capacity {
            let capacity = (longest + INITIAL_HEADROOM)
                .min(limit)
                .max(longest + 1)
                .max(self.capacity);
            for (k, v) in &mut self.layers {
                *k = grown(k, capacity)?;
                *v = grown(v, capacity)?;
            }
            self.capacity = capacity;
        }
        let joining = (0..first.layers.len())
            .map(|li| {
                let (k0, _) = &first.layers[li];
                let (kv_heads, _, head_dim) = k0.dims3()?;
                let shape = (sequences.len(), kv_heads, self.capacity, head_dim);
                let keys = Tensor::zeros(shape, k0.dtype(), k0.device())?;
                let values = Tensor::zeros(shape, k0.dtype(), k0.device())?;
                for (row, seq) in sequences.iter().enumerate() {
                    let (k, v) = &seq.layers[li];
                    keys.narrow(0, row, 1)?
                        .slice_set(&k.unsqueeze(0)?.contiguous()?, 2, 0)?;
                    values
                        .narrow(0, row, 1)?
                        .slice_set(&v.unsqueeze(0)?.contiguous()?, 2, 0)?;
                }
                Ok((keys, values))
            })
            .collect::<Result<Vec<_>>>()?;
        self.layers = if self.layers.is_empty() {
            joining
        } else {
            self.layers
                .iter()
                .zip(joining)
                .map(|((k, v), (jk, jv))| {
                    Ok((Tensor::cat(&[k, &jk], 0)?, Tensor::cat(&[v, &jv], 0)?))
                })
                .collect::<Result<_>>()?
        };
        self.lens.extend(sequences.iter().map(SequenceKv::len));
        self.limits.extend_from_slice(limits);
        Ok(())
    }

    /// Tokens cached per row, i.e. the position of each row's next token.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Keeps only the given rows (ascending), e.g. when sequences finish. With none left, the
    /// buffers are freed and the next [`BatchCache::extend`] starts afresh.
    pub fn retain(&mut self, rows: &[usize]) -> Result<()> {
        if rows.len() == self.lens.len() {
            return Ok(());
        }
        if rows.is_empty() {
            *self = BatchCache::default();
            return Ok(());
        }
        let Some((first, _)) = self.layers.first() else {
            return Ok(());
        };
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            first.device(),
        )?;
        for (k, v) in &mut self.layers {
            // Layers of a replica that spans devices keep their rows on their own device.
            let index = index.to_device(k.device())?;
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        self.lens = rows.iter().map(|&r| self.lens[r]).collect();
        self.limits = rows.iter().map(|&r| self.limits[r]).collect();
        Ok(())
    }

    /// Makes room for one more token in every row, reallocating when a row is full.
    pub fn reserve_step(&mut self) -> Result<()> {
        let need = self.lens.iter().max().map_or(0, |l| l + 1);
        if need <= self.capacity {
            return Ok(());
        }
        let limit = self.limits.iter().copied().max().unwrap_or(0);
        let capacity = (self.capacity + self.capacity / 2)
            .max(need)
            .min(limit.max(need));
        for (k, v) in &mut self.layers {
            *k = grown(k, capacity)?;
            *v = grown(v, capacity)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Row-major indices of the slots the next token of every row goes to, for
    /// [`BatchCache::append`]: `(batch · kv_heads, head_dim)`, shared by all layers.
    pub fn step_slots(&self, kv_heads: usize, head_dim: usize, device: &Device) -> Result<Tensor> {
        let slots: Vec<u32> = self
            .lens
            .iter()
            .enumerate()
            .flat_map(|(row, &len)| {
                (0..kv_heads).flat_map(move |h| {
                    let slot = ((row * kv_heads + h) * self.capacity + len) as u32;
                    std::iter::repeat_n(slot, head_dim)
                })
            })
            .collect();
        Tensor::from_vec(slots, (self.lens.len() * kv_heads, head_dim), device)
    }

    /// Writes one new token per row into layer `layer` (`k`, `v` as `(kv_heads, batch,
    /// head_dim)`) and returns the layer's keys and values up to the longest row,
    /// `(batch, kv_heads, len, head_dim)` views without copies.
    pub fn append(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        slots: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (keys, values) = &self.layers[layer];
        let (batch, kv_heads, capacity, head_dim) = keys.dims4()?;
        let rows = (batch * kv_heads * capacity, head_dim);
        let new_rows = |t: &Tensor| t.transpose(0, 1)?.reshape((batch * kv_heads, head_dim));
        keys.reshape(rows)?.scatter_set(slots, &new_rows(k)?, 0)?;
        values.reshape(rows)?.scatter_set(slots, &new_rows(v)?, 0)?;
        let len = self.lens.iter().max().map_or(0, |l| l + 1);
        Ok((keys.narrow(2, 0, len)?, values.narrow(2, 0, len)?))
    }

    /// Counts the token written by the last [`BatchCache::append`] of every layer.
    pub fn advance(&mut self) {
        self.lens.iter_mut().for_each(|l| *l += 1);
    }

    /// Additive f32 mask `(batch, 1, 1, len)` for the step's queries after `append`: each row
    /// sees its own tokens (within `window` of its new position) and none of the padding.
    pub fn step_mask(&self, window: Option<usize>, device: &Device) -> Result<Tensor> {
        let len = self.lens.iter().max().map_or(0, |l| l + 1);
        let window = window.unwrap_or(usize::MAX);
        let mask: Vec<f32> = self
            .lens
            .iter()
            .flat_map(|&pos| {
                (0..len).map(move |j| {
                    if j <= pos && pos - j < window {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        Tensor::from_vec(mask, (self.lens.len(), 1, 1, len), device)
    }
}

/// `t` `(batch, kv_heads, capacity, head_dim)` copied into a zeroed buffer of a larger capacity.
fn grown(t: &Tensor, capacity: usize) -> Result<Tensor> {
    let (batch, kv_heads, _, head_dim) = t.dims4()?;
    let bigger = Tensor::zeros((batch, kv_heads, capacity, head_dim), t.dtype(), t.device())?;
    bigger.slice_set(t, 2, 0)?;
    Ok(bigger)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, IndexOp};

    use super::*;

    fn seq(len: usize, layers: usize, base: f32) -> SequenceKv {
        let kv = |offset: f32| {
            let data: Vec<f32> = (0..2 * len * 3).map(|i| base + offset + i as f32).collect();
            Tensor::from_vec(data, (2, len, 3), &Device::Cpu).unwrap()
        };
        SequenceKv {
            layers: (0..layers)
                .map(|l| (kv(l as f32 * 1000.0), kv(l as f32 * 1000.0 + 500.0)))
                .collect(),
        }
    }

    #[test]
    fn rows_keep_their_positions_through_appends_growth_and_retain() {
        let seqs = [seq(2, 2, 0.0), seq(5, 2, 10_000.0), seq(1, 2, 20_000.0)];
        let mut cache = BatchCache::default();
        cache.extend(&seqs, &[200; 3]).unwrap();
        assert_eq!(cache.lens(), &[2, 5, 1]);
        let dev = Device::Cpu;
        for step in 0..70 {
            cache.reserve_step().unwrap();
            let slots = cache.step_slots(2, 3, &dev).unwrap();
            for layer in 0..2 {
                // New keys of row b are all `-(b + 1) - step`, values their negatives' doubles.
                let k: Vec<f32> = (0..2)
                    .flat_map(|_| (0..3).flat_map(move |b| [-(b as f32 + 1.0) - step as f32; 3]))
                    .collect();
                let k = Tensor::from_vec(k, (2, 3, 3), &dev).unwrap();
                let v = (&k * 2.0).unwrap();
                let (keys, _) = cache.append(layer, &k, &v, &slots).unwrap();
                assert_eq!(keys.dim(2).unwrap(), 5 + step + 1);
            }
            cache.advance();
        }
        assert_eq!(cache.lens(), &[72, 75, 71]);
        cache.retain(&[0, 2]).unwrap();
        assert_eq!(cache.lens(), &[72, 71]);
        let slots = cache.step_slots(2, 3, &dev).unwrap();
        let zeros = Tensor::zeros((2, 2, 3), DType::F32, &dev).unwrap();
        let (keys, values) = cache.append(1, &zeros, &zeros, &slots).unwrap();
        // Row 1 is the third sequence: its prompt key, then 70 appended steps, then the zero.
        let k = keys.i(1).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(k[0][0], seqs[2].layers[1].0.to_vec3::<f32>().unwrap()[0][0]);
        assert_eq!(k[1][1], vec![-3.0; 3]);
        assert_eq!(k[1][70], vec![-72.0; 3]);
        assert_eq!(k[1][71], vec![0.0; 3]);
        assert_eq!(k[1].len(), 73, "up to the longest row after the append");
        assert_eq!(k[1][72], vec![0.0; 3], "padding");
        let v = values.i(0).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(v[0][2], vec![-2.0; 3]);
        assert_eq!(v[1][0], seqs[0].layers[1].1.to_vec3::<f32>().unwrap()[1][0]);
        let mask = cache
            .step_mask(Some(3), &dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let visible: Vec<usize> = (0..73).filter(|&j| mask[73 + j] == 0.0).collect();
        assert_eq!(
            visible,
            vec![69, 70, 71],
            "row 1: its window, up to its new token"
        );
    }

    /// Keys of `layer` for row `row`, `(kv_heads, len, head_dim)`, after an append of zeros.
    fn row_keys(cache: &BatchCache, layer: usize, row: usize) -> Vec<Vec<Vec<f32>>> {
        let dev = Device::Cpu;
        let slots = cache.step_slots(2, 3, &dev).unwrap();
        let zeros = Tensor::zeros((2, cache.lens().len(), 3), DType::F32, &dev).unwrap();
        let (keys, _) = cache.append(layer, &zeros, &zeros, &slots).unwrap();
        keys.i(row).unwrap().to_vec3::<f32>().unwrap()
    }

    #[test]
    fn rows_joining_a_running_cache_start_at_position_zero_and_grow_it() {
        let mut cache = BatchCache::default();
        cache.extend(&[seq(3, 2, 0.0)], &[300]).unwrap();
        let dev = Device::Cpu;
        for _ in 0..5 {
            cache.reserve_step().unwrap();
            let slots = cache.step_slots(2, 3, &dev).unwrap();
            let ones = Tensor::ones((2, 1, 3), DType::F32, &dev).unwrap();
            for layer in 0..2 {
                cache.append(layer, &ones, &ones, &slots).unwrap();
            }
            cache.advance();
        }
        // A prompt longer than the capacity (3 + 64) joins, then a short one.
        let long = seq(100, 2, 10_000.0);
        let short = seq(2, 2, 20_000.0);
        cache.extend(std::slice::from_ref(&long), &[300]).unwrap();
        cache.extend(std::slice::from_ref(&short), &[10]).unwrap();
        assert_eq!(cache.lens(), &[8, 100, 2]);
        let first = row_keys(&cache, 1, 0);
        assert_eq!(
            first[0][2],
            seq(3, 2, 0.0).layers[1].0.to_vec3::<f32>().unwrap()[0][2]
        );
        assert_eq!(first[0][3..8], vec![vec![1.0; 3]; 5]);
        assert_eq!(first[0][8], vec![0.0; 3], "the step's own token");
        let joined = row_keys(&cache, 1, 1);
        assert_eq!(
            joined[1][..100],
            long.layers[1].0.to_vec3::<f32>().unwrap()[1][..]
        );
        let last = row_keys(&cache, 0, 2);
        assert_eq!(
            last[1][..2],
            short.layers[0].0.to_vec3::<f32>().unwrap()[1][..]
        );
        assert_eq!(last[1][2], vec![0.0; 3]);
        // The long row leaves; the others keep their keys.
        cache.retain(&[0, 2]).unwrap();
        assert_eq!(cache.lens(), &[8, 2]);
        assert_eq!(row_keys(&cache, 0, 1)[1][..2], last[1][..2]);
        cache.retain(&[]).unwrap();
        assert!(cache.lens().is_empty());
        cache.extend(std::slice::from_ref(&short), &[10]).unwrap();
        assert_eq!(row_keys(&cache, 0, 0)[1][..2], last[1][..2]);
    }
}
