//! The two tensor layouts Florence-2 checkpoints come in, and where each keeps every tensor.
//!
//! The hub repos (HuggingFaceM4/Florence-2-DocVQA, microsoft/Florence-2-*) hold the weights of
//! the original remote code (`auto_map` to `modeling_florence2.py`): `vision_tower.…` with the
//! block wrappers in the names (`conv1.fn.dw`, `window_attn.fn.qkv`, `ffn.fn.net.fc1`), the
//! projector at the root with `image_projection` as a bare `[in, out]` matrix, and the BART
//! under `language_model.model`. transformers' native `Florence2ForConditionalGeneration`
//! renames them (its `convert_florence2_original_pytorch_to_hf.py`): `model.vision_tower.…`
//! without wrappers, `model.multi_modal_projector` with a Linear `image_projection`
//! (`[out, in]`), and `model.language_model`. The computation is the same; only names and the
//! projection's orientation differ, so the model's components ask a [`Layout`] for their
//! weights views and never spell a name themselves.

use docpipe_vlm::nn::Linear;
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

/// Which layout a checkpoint's tensors are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// transformers' native names (`model.vision_tower.…`).
    Native,
    /// The hub's remote-code names (`vision_tower.…conv1.fn.dw`).
    RemoteCode,
}

/// The names inside one spatial or channel block.
#[derive(Debug, Clone)]
pub struct BlockNames {
    /// The depthwise convolution before the attention.
    pub conv1: String,
    /// The depthwise convolution before the MLP.
    pub conv2: String,
    /// The LayerNorm before the attention.
    pub norm1: String,
    /// The LayerNorm before the MLP.
    pub norm2: String,
    /// The attention's `qkv` and `proj`.
    pub attn: String,
    /// The MLP's `fc1` and `fc2`.
    pub mlp: String,
}

/// The two kinds of DaViT block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Depthwise convolution plus window attention.
    Spatial,
    /// Depthwise convolution plus channel-group attention.
    Channel,
}

impl BlockKind {
    /// The block's name under a DaViT block (`spatial_block`, `channel_block`).
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Spatial => "spatial_block",
            BlockKind::Channel => "channel_block",
        }
    }

    fn attention(self) -> &'static str {
        match self {
            BlockKind::Spatial => "window_attn",
            BlockKind::Channel => "channel_attn",
        }
    }
}

impl Layout {
    /// The layout of `weights`, told by the first stage's patch convolution.
    pub fn detect(weights: &Weights) -> Result<Layout, String> {
        if weights.contains("model.vision_tower.convs.0.conv.weight") {
            Ok(Layout::Native)
        } else if weights.contains("vision_tower.convs.0.proj.weight") {
            Ok(Layout::RemoteCode)
        } else {
            Err("neither a transformers Florence-2 checkpoint (no model.vision_tower.convs.0.conv.weight) nor a remote-code one (no vision_tower.convs.0.proj.weight)".into())
        }
    }

    /// How the model id and logs name the layout.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Native => "transformers (Florence2ForConditionalGeneration names)",
            Layout::RemoteCode => "remote code (hub modeling_florence2.py names)",
        }
    }

    /// The DaViT tower.
    pub fn vision(self, root: &Weights) -> Weights {
        match self {
            Layout::Native => root.pp("model.vision_tower"),
            Layout::RemoteCode => root.pp("vision_tower"),
        }
    }

    /// The convolution of a stage's patch embedding, under `convs.N`.
    pub fn patch_conv(self) -> &'static str {
        match self {
            Layout::Native => "conv",
            Layout::RemoteCode => "proj",
        }
    }

    /// The names inside a block of `kind`.
    pub fn block(self, kind: BlockKind) -> BlockNames {
        let attn = kind.attention();
        match self {
            Layout::Native => BlockNames {
                conv1: "conv1".into(),
                conv2: "conv2".into(),
                norm1: "norm1".into(),
                norm2: "norm2".into(),
                attn: attn.into(),
                mlp: "ffn".into(),
            },
            Layout::RemoteCode => BlockNames {
                conv1: "conv1.fn.dw".into(),
                conv2: "conv2.fn.dw".into(),
                norm1: format!("{attn}.norm"),
                norm2: "ffn.norm".into(),
                attn: format!("{attn}.fn"),
                mlp: "ffn.fn.net".into(),
            },
        }
    }

    /// The projector's position table, LayerNorm and projection live under this view.
    pub fn projector(self, root: &Weights) -> Weights {
        match self {
            Layout::Native => root.pp("model.multi_modal_projector"),
            Layout::RemoteCode => root.clone(),
        }
    }

    /// The learned 2-D position table, under the projector view.
    pub fn position_table(self) -> &'static str {
        match self {
            Layout::Native => "image_position_embed",
            Layout::RemoteCode => "image_pos_embed",
        }
    }

    /// The bias-free image projection from `in_dim` to `out_dim`, under the projector view:
    /// a Linear in the native layout, a raw `[in, out]` matrix (transposed here) in the other.
    pub fn image_projection(
        self,
        projector: &Weights,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Linear, LoadError> {
        match self {
            Layout::Native => {
                Linear::load(&projector.pp("image_projection"), in_dim, out_dim, false)
            }
            Layout::RemoteCode => {
                let matrix = projector.get("image_projection", (in_dim, out_dim))?;
                let weight = matrix
                    .t()
                    .and_then(|t| t.contiguous())
                    .map_err(LoadError::Device)?;
                Ok(Linear::new(weight, None))
            }
        }
    }

    /// The BART model (`shared`, `encoder`, `decoder`).
    pub fn language(self, root: &Weights) -> Weights {
        match self {
            Layout::Native => root.pp("model.language_model"),
            Layout::RemoteCode => root.pp("language_model.model"),
        }
    }

    /// The output projection, for checkpoints that do not tie it to the embeddings.
    pub fn lm_head(self, root: &Weights) -> Weights {
        match self {
            Layout::Native => root.pp("lm_head"),
            Layout::RemoteCode => root.pp("language_model.lm_head"),
        }
    }
}
