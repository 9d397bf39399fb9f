//! The connector (`model.connector`, spec G.4): pixel shuffle, which folds each `s × s`
//! window of a tile's patch grid into one token `s²` times wider, then one linear projection
//! to the text width without bias (`modality_projection.proj`). No perceiver.

use candle_core::{Module, Result, Tensor};
use docpipe_vlm::nn::Linear;
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::Idefics3Config;

/// Pixel shuffle and projection.
pub struct Connector {
    scale: usize,
    proj: Linear,
}

impl Connector {
    /// The connector of `config` from the view of `model.connector`.
    pub fn new(config: &Idefics3Config, w: &Weights) -> std::result::Result<Self, LoadError> {
        let s = config.family.scale_factor;
        let proj = Linear::load(
            &w.pp("modality_projection").pp("proj"),
            config.vision.hidden_size * s * s,
            config.text.hidden_size,
            false,
        )?;
        Ok(Connector { scale: s, proj })
    }

    /// Tokens per tile of `side × side` patches.
    pub fn tokens_per_tile(&self, side: usize) -> usize {
        (side / self.scale).pow(2)
    }

    /// `out[n, h'·(N/s) + w', (j·s + k)·D + d] = x[n, (s·h' + j)·N + s·w' + k, d]`: the window
    /// row-major, as transformers' view/permute sequence. `patches` is `(tiles · N², D)`.
    pub fn pixel_shuffle(&self, patches: &Tensor, side: usize) -> Result<Tensor> {
        let s = self.scale;
        let (rows, d) = patches.dims2()?;
        let tiles = rows / (side * side);
        let m = side / s;
        patches
            .reshape((tiles, m, s, m, s, d))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((tiles * m * m, s * s * d))
    }

    /// Image features `(tiles · (N/s)², text hidden)` of the packed patches of full tiles of
    /// `side × side` patches each.
    pub fn forward(&self, patches: &Tensor, side: usize) -> Result<Tensor> {
        self.proj.forward(&self.pixel_shuffle(patches, side)?)
    }
}
