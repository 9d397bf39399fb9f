//! The LLaMA decoder of Idefics1 (`model.layers`, `model.norm`, `lm_head`) with its gated
//! cross-attention blocks interleaved, and the decoupled embedding and head.
//!
//! The embedding table is `embed_tokens.weight` followed by
//! `embed_tokens.additional_embedding.weight` (the added tokens, ids `vocab_size..`), and the
//! logits are `lm_head.weight` followed by `lm_head.additional_fc.weight`: transformers keeps
//! them apart only so that training can freeze one part, so each is concatenated once at load.
//!
//! As in docpipe-vlm's decoder, [`TextModel::prefill`] takes prompts packed end to end (no
//! padding) with attention per sequence, and [`TextModel::decode`] adds one token per sequence
//! with a batched [`BatchCache`]. The cross-attention reads per-image keys and values computed
//! once per batch ([`ImageKeys`]), per token run in the prefill and stacked per row
//! ([`StackedKv`]) while decoding.
//!
//! Across several devices ([`Placement`]) the embeddings sit on the first, each decoder layer
//! with the cross-attention block before it on its stage's device, norm and head on the last;
//! hidden states, rotary tables and masks move at each stage boundary, image states once per
//! device, and each layer's keys and values stay on its device.

use candle_core::{DType, Device, Module, Result, Tensor};
use docpipe_vlm::config::{Rope, RopeScaling};
use docpipe_vlm::kv_cache::{BatchCache, SequenceKv};
use docpipe_vlm::nn::{attention, per_segment, token_range, Linear, RmsNorm, Rows};
use docpipe_vlm::placement::Placement;
use docpipe_vlm::rope::inv_freq;
use docpipe_vlm::text::{
    causal_mask, follow, last_rows, rotary_tables, DecoderBlock, StepAttention,
};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::Idefics1Config;
use crate::cross_attention::{GatedCrossAttention, ImageKv, Run, StackedKv};

/// One decoder layer (`layers.N`, docpipe-vlm's block) and the cross-attention block before
/// it, if any.
struct DecoderLayer {
    /// Which device of the placement it runs on; tensors move when the stage changes, so the
    /// move code runs on groups of CPUs too.
    stage: usize,
    device: Device,
    cross: Option<usize>,
    block: DecoderBlock,
}

/// The image keys and values of a batch: per cross-attention block, per distinct image, on
/// the block's device.
pub struct ImageKeys {
    blocks: Vec<Vec<ImageKv>>,
}

/// One sequence of a packed prefill.
#[derive(Debug, Clone)]
pub struct PrefillSequence<'a> {
    /// Per prompt token, the batch image (index into [`TextModel::image_keys`]' images) it
    /// attends to.
    pub images: &'a [Option<usize>],
}

/// The decoder.
pub struct TextModel {
    config: Idefics1Config,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    cross: Vec<GatedCrossAttention>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
}

/// `name.weight` followed by `name.EXTRA.weight` when the checkpoint has added tokens.
fn decoupled(
    w: &Weights,
    extra: &str,
    config: &Idefics1Config,
) -> std::result::Result<Tensor, LoadError> {
    let h = config.hidden_size;
    let base = w.get("weight", (config.vocab_size, h))?;
    if config.additional_vocab_size == 0 {
        return Ok(base);
    }
    let added = w
        .pp(extra)
        .get("weight", (config.additional_vocab_size, h))?;
    Tensor::cat(&[&base, &added], 0).map_err(LoadError::Device)
}

impl TextModel {
    /// The decoder of `config` from the root view of the checkpoint, reading images of width
    /// `image_dim`, its parts on the devices of `placement`.
    pub fn new(
        config: &Idefics1Config,
        image_dim: usize,
        w: &Weights,
        placement: &Placement,
    ) -> std::result::Result<Self, LoadError> {
        let n = config.num_hidden_layers;
        let model = w.pp("model");
        let embed_tokens = decoupled(
            &model.pp("embed_tokens").on(placement.first()),
            "additional_embedding",
            config,
        )?;
        let layers = (0..n)
            .map(|i| {
                let w = model.pp("layers").pp(i).on(placement.layer(i, n));
                Ok(DecoderLayer {
                    stage: placement.stage_of(i, n),
                    device: w.device().clone(),
                    cross: config.cross_block(i),
                    block: DecoderBlock::load(&w, config.block_dims())?,
                })
            })
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        let cross = (0..config.cross_blocks())
            .map(|b| {
                let layer = b * config.cross_layer_interval;
                let w = model
                    .pp("gated_cross_attn_layers")
                    .pp(b)
                    .on(placement.layer(layer, n));
                GatedCrossAttention::new(config, image_dim, &w)
            })
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        let last = placement.last();
        let head = w.pp("lm_head").on(last);
        let lm_head = if config.tie_word_embeddings && !head.contains("weight") {
            embed_tokens.to_device(last).map_err(LoadError::Device)?
        } else {
            decoupled(&head, "additional_fc", config)?
        };
        let rope = Rope {
            theta: config.rope_theta,
            scaling: RopeScaling::Default,
        };
        Ok(TextModel {
            config: config.clone(),
            embed_tokens,
            layers,
            cross,
            norm: RmsNorm::load(
                &model.pp("norm").on(last),
                config.hidden_size,
                config.rms_norm_eps,
            )?,
            lm_head: Linear::new(lm_head, None),
            inv_freq: inv_freq(&rope, config.head_dim()),
        })
    }

    /// The device of the embeddings (the placement's first).
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// `(n, hidden)` embeddings of token ids.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), self.device())?;
        self.embed_tokens.index_select(&ids, 0)
    }

    /// Every block's keys and values of `images` images whose `tokens` image tokens each are
    /// packed in `states`. The states move to each device once.
    pub fn image_keys(&self, states: &Tensor, images: usize, tokens: usize) -> Result<ImageKeys> {
        let mut on_device: Vec<Tensor> = Vec::new();
        let mut blocks = Vec::with_capacity(self.cross.len());
        for (b, block) in self.cross.iter().enumerate() {
            let device = &self.layers[b * self.config.cross_layer_interval].device;
            let states = match on_device.iter().find(|s| s.device().same_device(device)) {
                Some(s) => s.clone(),
                None => {
                    let s = states.to_device(device)?;
                    on_device.push(s.clone());
                    s
                }
            };
            blocks.push(block.image_kv(&states, images, tokens)?);
        }
        Ok(ImageKeys { blocks })
    }

    /// Keys and values for a batch without images.
    pub fn no_image_keys(&self) -> ImageKeys {
        ImageKeys {
            blocks: vec![Vec::new(); self.cross.len()],
        }
    }

    /// The stacked keys and values of decoding rows that attend to `rows` (images of `keys`),
    /// per block on its device.
    pub fn stacked_kv(
        &self,
        keys: &ImageKeys,
        rows: &[Option<usize>],
        image_tokens: usize,
    ) -> Result<Vec<StackedKv>> {
        let shape = (
            self.config.num_attention_heads,
            image_tokens,
            self.config.head_dim(),
        );
        keys.blocks
            .iter()
            .enumerate()
            .map(|(b, images)| {
                let device = &self.layers[b * self.config.cross_layer_interval].device;
                StackedKv::new(images, rows, shape, device, self.dtype())
            })
            .collect()
    }

    /// Runs the decoder over packed prompts `(Σ tokens, hidden)`, each from position 0.
    /// Returns the logits of each sequence's last token, `(sequences, vocab)` in f32, and each
    /// sequence's keys and values.
    pub fn prefill(
        &self,
        embeds: &Tensor,
        sequences: &[PrefillSequence<'_>],
        keys: &ImageKeys,
    ) -> Result<(Tensor, Vec<SequenceKv>)> {
        let tokens: Vec<usize> = sequences.iter().map(|s| s.images.len()).collect();
        let positions: Vec<usize> = tokens.iter().flat_map(|&t| 0..t).collect();
        let (mut cos, mut sin) =
            rotary_tables(&self.inv_freq, &positions, self.device(), self.dtype())?;
        let mut masks = tokens
            .iter()
            .map(|&t| causal_mask(t, 0, None, self.device()))
            .collect::<Result<Vec<_>>>()?;
        let mut kvs: Vec<SequenceKv> = sequences
            .iter()
            .map(|_| SequenceKv { layers: Vec::new() })
            .collect();
        let mut hidden = embeds.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            if li > 0 && layer.stage != self.layers[li - 1].stage {
                follow(&layer.device, [&mut hidden, &mut cos, &mut sin])?;
                follow(&layer.device, masks.iter_mut().flatten())?;
            }
            if let Some(b) = layer.cross {
                let runs = runs(sequences, &keys.blocks[b]);
                hidden = self.cross[b].forward(&hidden, &runs)?;
            }
            hidden = layer
                .block
                .forward(&hidden, (&cos, &sin), Rows::Packed, |q, k, v| {
                    per_segment(&tokens, |i, offset, t| {
                        let ks = token_range(&k, offset, t)?;
                        let vs = token_range(&v, offset, t)?;
                        let out = attention(
                            &token_range(&q, offset, t)?,
                            &ks,
                            &vs,
                            self.scale(),
                            masks[i].as_ref(),
                        )?;
                        kvs[i].layers.push((ks, vs));
                        Ok(out)
                    })
                })?;
        }
        let last = last_rows(&hidden, &tokens)?;
        Ok((self.logits(&last, Rows::Packed)?, kvs))
    }

    /// One decoding step: the embeddings `(rows, hidden)` of one new token per cache row, whose
    /// cross-attention reads `cross` (one [`StackedKv`] per block, rows as the cache's).
    /// Returns their logits `(rows, vocab)` in f32 and counts the tokens into the cache.
    pub fn decode(
        &self,
        embeds: &Tensor,
        cache: &mut BatchCache,
        cross: &[StackedKv],
    ) -> Result<Tensor> {
        let cfg = &self.config;
        cache.reserve_step()?;
        let (mut cos, mut sin) =
            rotary_tables(&self.inv_freq, cache.lens(), self.device(), self.dtype())?;
        let heads = cfg.num_attention_heads;
        let mut slots = cache.step_slots(heads, cfg.head_dim(), self.device())?;
        let mut mask = cache.step_mask(None, self.device())?;
        let mut hidden = embeds.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            if li > 0 && layer.stage != self.layers[li - 1].stage {
                follow(
                    &layer.device,
                    [&mut hidden, &mut cos, &mut sin, &mut slots, &mut mask],
                )?;
            }
            if let Some(b) = layer.cross {
                hidden = self.cross[b].forward_step(&hidden, &cross[b])?;
            }
            let step = StepAttention::new(cache, &slots, &mask, self.scale());
            hidden = layer.block.decode_step(&hidden, (&cos, &sin), li, &step)?;
        }
        cache.advance();
        self.logits(&hidden, Rows::Decode)
    }

    fn scale(&self) -> f64 {
        (self.config.head_dim() as f64).powf(-0.5)
    }

    /// Final norm and the decoupled head in f32, on the last device, over rows of the kind
    /// `rows`.
    fn logits(&self, hidden: &Tensor, rows: Rows) -> Result<Tensor> {
        let hidden = hidden.to_device(self.lm_head.device())?;
        self.lm_head
            .forward_rows(&self.norm.forward(&hidden)?, rows)?
            .to_dtype(DType::F32)
    }
}

/// The runs of consecutive tokens that see the same image, sequence by sequence.
fn runs<'a>(sequences: &[PrefillSequence<'_>], images: &'a [ImageKv]) -> Vec<Run<'a>> {
    let mut runs: Vec<Run<'a>> = Vec::new();
    for seq in sequences {
        let mut current: Option<(Option<usize>, usize)> = None;
        for &image in seq.images {
            current = match current {
                Some((same, n)) if same == image => Some((same, n + 1)),
                Some((other, n)) => {
                    runs.push(Run {
                        tokens: n,
                        image: other.map(|i| &images[i]),
                    });
                    Some((image, 1))
                }
                None => Some((image, 1)),
            };
        }
        if let Some((image, n)) = current {
            runs.push(Run {
                tokens: n,
                image: image.map(|i| &images[i]),
            });
        }
    }
    runs
}
