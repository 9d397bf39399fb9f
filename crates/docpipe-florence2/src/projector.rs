//! `Florence2MultiModalProjector`: the last DaViT map plus learned 2-D positions and the
//! cosine temporal embedding of frame 0, as tokens led by their mean (the "spatial average
//! pool" in front of the "temporal average pool" of one frame), projected to the language
//! model's width and normalized.

use candle_core::{DType, Module, Result, Tensor};
use docpipe_vlm::nn::{LayerNorm, Linear};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::VisionConfig;
use crate::davit::FeatureRows;
use crate::layout::Layout;

/// The image tokens one image becomes.
#[derive(Debug, Clone)]
pub struct Projector {
    /// `(max_positions, C - C/2)`: fills the first channels, by column.
    columns: Tensor,
    /// `(max_positions, C/2)`: fills the last channels, by row.
    rows: Tensor,
    /// Row 0 of the cosine table (sin 0 on even channels, cos 0 on odd ones): the one frame.
    temporal: Tensor,
    projection: Linear,
    norm: LayerNorm,
    max_positions: usize,
}

impl Projector {
    /// The projector under the layout's view. The temporal row is computed, not read: it is
    /// a fixed buffer in both layouts.
    pub fn load(
        config: &VisionConfig,
        root: &Weights,
        layout: Layout,
    ) -> std::result::Result<Self, LoadError> {
        let w = layout.projector(root);
        let dim = config.out_dim();
        let positions = w.pp(layout.position_table());
        let max_positions = config.max_position_embeddings;
        let temporal: Vec<f32> = (0..dim)
            .map(|i| if i % 2 == 0 { 0f32.sin() } else { 0f32.cos() })
            .collect();
        Ok(Projector {
            columns: positions.get("column_embeddings.weight", (max_positions, dim - dim / 2))?,
            rows: positions.get("row_embeddings.weight", (max_positions, dim / 2))?,
            temporal: Tensor::from_vec(temporal, dim, w.device())
                .and_then(|t| t.to_dtype(w.dtype()))
                .map_err(LoadError::Device)?,
            projection: layout.image_projection(&w, dim, config.projection_dim)?,
            norm: LayerNorm::load(&w.pp("image_proj_norm"), config.projection_dim, 1e-5)?,
            max_positions,
        })
    }

    /// The largest feature map side the position table covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// `(1 + H·W, projection_dim)` tokens of the tower's features.
    pub fn forward(&self, features: &FeatureRows) -> Result<Tensor> {
        let (h, w) = (features.height, features.width);
        let c = features.rows.dim(1)?;
        let cols = self
            .columns
            .narrow(0, 0, w)?
            .unsqueeze(0)?
            .broadcast_as((h, w, c - c / 2))?;
        let rows = self
            .rows
            .narrow(0, 0, h)?
            .unsqueeze(1)?
            .broadcast_as((h, w, c / 2))?;
        let positions = Tensor::cat(&[cols, rows], 2)?.reshape((h * w, c))?;
        let tokens = features
            .rows
            .add(&positions)?
            .broadcast_add(&self.temporal)?;
        let mean = tokens
            .to_dtype(DType::F32)?
            .mean_keepdim(0)?
            .to_dtype(tokens.dtype())?;
        let tokens = Tensor::cat(&[mean, tokens], 0)?;
        self.norm.forward(&self.projection.forward(&tokens)?)
    }
}
