//! The text decoder of both families, Mistral (Idefics2) and Llama 3.1 (Idefics3), which differ
//! only in their rotary frequencies ([`crate::rope`]) and Mistral's optional sliding window:
//! token embeddings, pre-norm layers with grouped-query attention and rotary embeddings
//! (rotate-half form), the final norm and `lm_head`.
//!
//! [`TextModel::prefill`] takes several prompts packed end to end (no padding): the linear
//! layers run on all their tokens at once and attention runs per sequence, after the keys and
//! values of a prefix it shares with other sequences when it has one. [`TextModel::decode`]
//! then adds one token per sequence with a batched [`BatchCache`]. A sequence's positions
//! continue from its length, which equals transformers' `cumsum(attention_mask) - 1` under
//! left padding.
//!
//! A replica that spans several devices ([`Placement`]) keeps the embeddings on the first, each
//! layer on its stage's device and the head on the last; the hidden states and what every
//! layer reads (rotary tables, masks, cache slots) move once at each stage boundary, and each
//! layer's keys and values stay on its own device.

use candle_core::{DType, Device, Module, Result, Tensor};

use crate::config::TextConfig;
use crate::error::LoadError;
use crate::flash::{FlashAttention, Masking};
use crate::kv_cache::{BatchCache, SequenceKv};
use crate::nn::{
    attention, batched_attention, per_segment, split_heads, token_range, AttentionProjections,
    GatedMlp, Linear, RmsNorm, Rows,
};
use crate::placement::Placement;
use crate::rope::inv_freq;
use crate::weights::Weights;

/// The sizes of a pre-norm decoder block.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key and value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// MLP width.
    pub intermediate: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// MLP nonlinearity.
    pub act: crate::config::Activation,
}

impl From<&TextConfig> for BlockDims {
    fn from(config: &TextConfig) -> Self {
        BlockDims {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim,
            intermediate: config.intermediate_size,
            rms_norm_eps: config.rms_norm_eps,
            act: config.hidden_act,
        }
    }
}

/// A Llama / Mistral decoder block (`layers.N`): RMSNorm, self-attention with rotary
/// embeddings, RMSNorm, gated MLP, each around a residual. The Idefics2/3 decoder stacks them;
/// Idefics1's puts its cross-attention blocks between them.
pub struct DecoderBlock {
    dims: BlockDims,
    input_norm: RmsNorm,
    attn: AttentionProjections,
    post_norm: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderBlock {
    /// The block of the layer view `w`.
    pub fn load(w: &Weights, dims: BlockDims) -> std::result::Result<Self, LoadError> {
        let (h, eps) = (dims.hidden, dims.rms_norm_eps);
        Ok(DecoderBlock {
            dims,
            input_norm: RmsNorm::load(&w.pp("input_layernorm"), h, eps)?,
            attn: AttentionProjections::grouped(w, h, dims.heads, dims.kv_heads, dims.head_dim)?,
            post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), h, eps)?,
            mlp: GatedMlp::load(&w.pp("mlp"), h, dims.intermediate, h, dims.act)?,
        })
    }

    /// The block over `hidden` `(tokens, hidden)`: packed prompt tokens or a decoding step's
    /// rows, as `rows` says. `attend` gets q `(heads, tokens, d)` and k, v
    /// `(kv_heads, tokens, d)` after RoPE and returns the attention output `(tokens, heads·d)`.
    pub fn forward(
        &self,
        hidden: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        rows: Rows,
        attend: impl FnOnce(Tensor, Tensor, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let d = &self.dims;
        let x = self.input_norm.forward(hidden)?;
        let (q, k, v) = self.attn.qkv(&x, rows)?;
        let heads = |t: &Tensor, n| split_heads(t, n, d.head_dim);
        // rope works on (batch, heads, tokens, dim) with one position per token.
        let rope = |t: Tensor| candle_nn::rotary_emb::rope(&t.unsqueeze(0)?, cos, sin)?.squeeze(0);
        let q = rope(heads(&q, d.heads)?)?;
        let k = rope(heads(&k, d.kv_heads)?)?;
        let v = heads(&v, d.kv_heads)?;
        let hidden = (hidden + self.attn.o.forward_rows(&attend(q, k, v)?, rows)?)?;
        let x = self.post_norm.forward(&hidden)?;
        &hidden + self.mlp.forward_rows(&x, rows)?
    }
}

/// What a decoding step's attention needs in every layer: the batch cache, where the step's
/// keys and values go in it, and the rows' mask over it ([`BatchCache::step_slots`],
/// [`BatchCache::step_mask`]), on the layer's device.
pub struct StepAttention<'a> {
    cache: &'a BatchCache,
    slots: &'a Tensor,
    mask: &'a Tensor,
    scale: f64,
}

impl<'a> StepAttention<'a> {
    /// The step's `slots` and `mask` in `cache`, attention scaled by `scale`.
    pub fn new(cache: &'a BatchCache, slots: &'a Tensor, mask: &'a Tensor, scale: f64) -> Self {
        StepAttention {
            cache,
            slots,
            mask,
            scale,
        }
    }
}

impl DecoderBlock {
    /// The block for one decoding step of layer `layer`: the step's keys and values go into
    /// the cache and each row attends over its own cached tokens.
    pub fn decode_step(
        &self,
        hidden: &Tensor,
        rope: (&Tensor, &Tensor),
        layer: usize,
        step: &StepAttention<'_>,
    ) -> Result<Tensor> {
        self.forward(hidden, rope, Rows::Decode, |q, k, v| {
            let (keys, values) = step.cache.append(layer, &k, &v, step.slots)?;
            batched_attention(&q, &keys, &values, step.scale, step.mask)
        })
    }
}

/// One decoder layer and where it runs.
struct DecoderLayer {
    /// Which device of the placement it runs on: its weights, inputs, keys and values live
    /// there.
    stage: usize,
    device: Device,
    block: DecoderBlock,
}

/// One sequence's share of a packed prefill: its new tokens, after the already computed keys
/// and values of its first tokens, if any (a prompt prefix shared with other sequences).
pub struct Segment<'a> {
    /// New tokens of the sequence in the packed input.
    pub tokens: usize,
    /// Keys and values of the tokens before them, if any.
    pub past: Option<&'a SequenceKv>,
}

impl Segment<'_> {
    fn past_len(&self) -> usize {
        self.past.map_or(0, SequenceKv::len)
    }
}

/// The decoder (`model.text_model`) and its `lm_head`.
pub struct TextModel {
    config: TextConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
}

impl TextModel {
    /// The decoder of `config` from the view of `model.text_model` and the view of the head
    /// (`lm_head`; with tied embeddings and no such tensor, the embedding table is the head),
    /// its parts on the devices of `placement`.
    pub fn new(
        config: &TextConfig,
        w: &Weights,
        lm_head: &Weights,
        placement: &Placement,
    ) -> std::result::Result<Self, LoadError> {
        let h = config.hidden_size;
        let n = config.num_hidden_layers;
        let embed_tokens = w
            .pp("embed_tokens")
            .on(placement.first())
            .get("weight", (config.vocab_size, h))?;
        let layers = w.pp("layers");
        let layers = (0..n)
            .map(|i| {
                let w = layers.pp(i).on(placement.layer(i, n));
                Ok(DecoderLayer {
                    stage: placement.stage_of(i, n),
                    device: w.device().clone(),
                    block: DecoderBlock::load(&w, config.into())?,
                })
            })
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        let (lm_head, out) = (lm_head.on(placement.last()), w.on(placement.last()));
        let lm_head = if config.tie_word_embeddings && !lm_head.contains("weight") {
            let on_last = embed_tokens
                .to_device(placement.last())
                .map_err(LoadError::Device)?;
            Linear::new(on_last, None)
        } else {
            Linear::load(&lm_head, h, config.vocab_size, false)?
        };
        Ok(TextModel {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::load(&out.pp("norm"), h, config.rms_norm_eps)?,
            lm_head,
            inv_freq: inv_freq(&config.rope, config.head_dim),
        })
    }

    /// Its settings.
    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// The device its weights are on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The dtype of its weights.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// `(n, hidden)` embeddings of token ids.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), self.device())?;
        self.embed_tokens.index_select(&ids, 0)
    }

    /// Runs the decoder over packed new tokens `(Σ tokens, hidden)`. Returns the logits of each
    /// segment's last token, `(segments, vocab)` in f32, and each segment's keys and values,
    /// its past included.
    pub fn prefill(
        &self,
        embeds: &Tensor,
        segments: &[Segment<'_>],
    ) -> Result<(Tensor, Vec<SequenceKv>)> {
        let tokens: Vec<usize> = segments.iter().map(|s| s.tokens).collect();
        let positions: Vec<usize> = segments
            .iter()
            .flat_map(|s| s.past_len()..s.past_len() + s.tokens)
            .collect();
        let (cos, sin) = rotary_tables(&self.inv_freq, &positions, self.device(), self.dtype())?;
        let causal = Masking::Causal {
            window: self.config.sliding_window,
        };
        let flash = FlashAttention::new(self.device(), self.dtype(), self.config.head_dim, causal);
        // The fused kernel masks by itself.
        let mut masks = match flash {
            Some(_) => Vec::new(),
            None => segments
                .iter()
                .map(|s| {
                    causal_mask(
                        s.tokens,
                        s.past_len(),
                        self.config.sliding_window,
                        self.device(),
                    )
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let mut kvs: Vec<SequenceKv> = segments
            .iter()
            .map(|_| SequenceKv { layers: Vec::new() })
            .collect();
        let key_lens: Vec<usize> = segments.iter().map(|s| s.past_len() + s.tokens).collect();
        let (mut cos, mut sin, mut hidden) = (cos, sin, embeds.clone());
        for (li, layer) in self.layers.iter().enumerate() {
            if li > 0 && layer.stage != self.layers[li - 1].stage {
                let moved = follow(&layer.device, [&mut hidden, &mut cos, &mut sin]);
                moved.and_then(|()| follow(&layer.device, masks.iter_mut().flatten()))?;
            }
            hidden = layer
                .block
                .forward(&hidden, (&cos, &sin), Rows::Packed, |q, k, v| {
                    let mut offset = 0;
                    for (segment, kv) in segments.iter().zip(kvs.iter_mut()) {
                        let mut ks = token_range(&k, offset, segment.tokens)?;
                        let mut vs = token_range(&v, offset, segment.tokens)?;
                        if let Some(past) = segment.past {
                            let (pk, pv) = &past.layers[li];
                            ks = Tensor::cat(&[pk, &ks], 1)?;
                            vs = Tensor::cat(&[pv, &vs], 1)?;
                        }
                        kv.layers.push((ks, vs));
                        offset += segment.tokens;
                    }
                    match flash {
                        Some(flash) => {
                            let layer_kv = kvs.iter().map(|kv| &kv.layers[li]);
                            // (heads, tokens, d) → (tokens, heads, d), keys with their past.
                            let tokens_first = |t: &Tensor| t.transpose(0, 1);
                            let keys = layer_kv.clone().map(|(k, _)| tokens_first(k));
                            let values = layer_kv.map(|(_, v)| tokens_first(v));
                            flash.attention(
                                &tokens_first(&q)?,
                                &Tensor::cat(&keys.collect::<Result<Vec<_>>>()?, 0)?,
                                &Tensor::cat(&values.collect::<Result<Vec<_>>>()?, 0)?,
                                (&tokens, &key_lens),
                                self.scale(),
                            )
                        }
                        None => per_segment(&tokens, |i, offset, t| {
                            let (ks, vs) = &kvs[i].layers[li];
                            let qs = token_range(&q, offset, t)?;
                            attention(&qs, ks, vs, self.scale(), masks[i].as_ref())
                        }),
                    }
                })?;
        }
        let last = last_rows(&hidden, &tokens)?;
        Ok((self.logits(&last, Rows::Packed)?, kvs))
    }

    /// One decoding step: the embeddings `(rows, hidden)` of one new token per cache row.
    /// Returns their logits `(rows, vocab)` in f32 and counts the tokens into the cache.
    pub fn decode(&self, embeds: &Tensor, cache: &mut BatchCache) -> Result<Tensor> {
        let cfg = &self.config;
        cache.reserve_step()?;
        let (cos, sin) = rotary_tables(&self.inv_freq, cache.lens(), self.device(), self.dtype())?;
        let mut slots = cache.step_slots(cfg.num_key_value_heads, cfg.head_dim, self.device())?;
        let mut mask = cache.step_mask(cfg.sliding_window, self.device())?;
        let (mut cos, mut sin, mut hidden) = (cos, sin, embeds.clone());
        for (li, layer) in self.layers.iter().enumerate() {
            if li > 0 && layer.stage != self.layers[li - 1].stage {
                let inputs = [&mut hidden, &mut cos, &mut sin, &mut slots, &mut mask];
                follow(&layer.device, inputs)?;
            }
            let step = StepAttention::new(cache, &slots, &mask, self.scale());
            hidden = layer.block.decode_step(&hidden, (&cos, &sin), li, &step)?;
        }
        cache.advance();
        self.logits(&hidden, Rows::Decode)
    }

    fn scale(&self) -> f64 {
        (self.config.head_dim as f64).powf(-0.5)
    }

    /// Final norm and `lm_head` in f32, over rows of the kind `rows`.
    fn logits(&self, hidden: &Tensor, rows: Rows) -> Result<Tensor> {
        let hidden = hidden.to_device(self.lm_head.device())?;
        self.lm_head
            .forward_rows(&self.norm.forward(&hidden)?, rows)?
            .to_dtype(DType::F32)
    }
}

/// cos and sin `(tokens, head_dim/2)` of `inv_freq` at the given positions, in f32 then
/// `dtype`.
pub fn rotary_tables(
    inv_freq: &[f32],
    positions: &[usize],
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let shape = (positions.len(), half);
    Ok((
        Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
    ))
}

/// The causal (and, with `window`, sliding-window) additive mask `(t, past + t)` of `t` new
/// queries after `past` cached keys; none for one query that sees every key.
pub fn causal_mask(
    t: usize,
    past: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = past + t;
    let window = window.unwrap_or(usize::MAX);
    if t == 1 && total <= window {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| (past + i, j)))
        .map(|(q, j)| {
            if j <= q && q - j < window {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Tensor::from_vec(mask, (t, total), device).map(Some)
}

/// The last row of each of the segments of `tokens` rows packed in `hidden`.
pub fn last_rows(hidden: &Tensor, tokens: &[usize]) -> Result<Tensor> {
    let last: Vec<u32> = tokens
        .iter()
        .scan(0, |end, t| {
            *end += t;
            Some((*end - 1) as u32)
        })
        .collect();
    let last = Tensor::from_vec(last, tokens.len(), hidden.device())?;
    hidden.index_select(&last, 0)
}

/// Moves the tensors a run of layers reads onto its device, at a stage boundary.
pub fn follow<'a>(
    device: &Device,
    tensors: impl IntoIterator<Item = &'a mut Tensor>,
) -> Result<()> {
    for t in tensors {
        *t = t.to_device(device)?;
    }
    Ok(())
}
