//! Rotary frequencies (`inv_freq`) for the decoder: the default `1 / theta^(2i/d)` (Mistral,
//! spec E.3) and Llama 3.1's rescaling of it (spec G.4), both in float32 with transformers'
//! operation order, because the fixture references are compared at 1e-3 of the logits.

use crate::config::{Rope, RopeScaling};

/// `inv_freq` for heads of width `head_dim` (`head_dim / 2` values).
pub fn inv_freq(rope: &Rope, head_dim: usize) -> Vec<f32> {
    let base = rope.theta as f32;
    // A float32 tensor power, as `torch.arange(0, d, 2).float() / d` then `base ** x`.
    let default = (0..head_dim / 2).map(|k| 1.0f32 / base.powf((2 * k) as f32 / head_dim as f32));
    match rope.scaling {
        RopeScaling::Default => default.collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => default
            .map(|inv| {
                llama3(
                    inv,
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                )
            })
            .collect(),
    }
}

/// `_compute_llama3_parameters` for one frequency. `2π / inv` is computed as PyTorch's
/// `__rtruediv__` does, `reciprocal(inv) · 2π`, and likewise `original / wavelen`; wavelengths
/// above `original / low` are divided by `factor`, those below `original / high` kept, and the
/// band between (bounds included) interpolated.
fn llama3(inv: f32, factor: f32, low: f32, high: f32, original: f32) -> f32 {
    let wavelen = inv.recip() * (2.0 * std::f64::consts::PI) as f32;
    let low_wavelen = original / low;
    let high_wavelen = original / high;
    let scaled = if wavelen > low_wavelen {
        inv / factor
    } else {
        inv
    };
    if wavelen < high_wavelen || wavelen > low_wavelen {
        return scaled;
    }
    let smooth = (wavelen.recip() * original - low) / (high - low);
    (1.0 - smooth) * scaled / factor + smooth * scaled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let rope = Rope {
            theta: 5e5,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            },
        };
        let plain = inv_freq(
            &Rope {
                theta: 5e5,
                scaling: RopeScaling::Default,
            },
            16,
        );
        let scaled = inv_freq(&rope, 16);
        assert_eq!(scaled[0], plain[0]);
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0);
        assert!(scaled[2..]
            .iter()
            .zip(&plain[2..])
            .all(|(s, p)| *s == p / 8.0));
    }
}
