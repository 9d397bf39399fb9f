//! The Mistral text decoder: token embeddings, pre-norm layers with grouped-query attention and
//! rotary embeddings (rotate-half form), a per-sequence KV cache, the final norm and `lm_head`.
//!
//! A forward call takes several sequences packed end to end (no padding): the linear layers
//! run on all their tokens at once and attention runs per sequence against that sequence's own
//! cache. Each sequence's positions continue from its cache length, which equals transformers'
//! `cumsum(attention_mask) - 1` under left padding.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::kv_cache::KvCache;

use crate::config::TextConfig;
use crate::error::LoadError;
use crate::nn::{attention, split_heads, AttentionProjections, GatedMlp, Linear, RmsNorm};
use crate::weights::Weights;

struct DecoderLayer {
    input_norm: RmsNorm,
    attn: AttentionProjections,
    post_norm: RmsNorm,
    mlp: GatedMlp,
}

/// One sequence's keys (after RoPE) and values, per layer.
pub struct SequenceCache {
    layers: Vec<KvCache>,
}

impl SequenceCache {
    /// Tokens cached so far, i.e. the position of the next token.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::current_seq_len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sequence's share of a packed forward call.
pub struct Segment<'a> {
    /// Number of new tokens of this sequence in the packed input.
    pub tokens: usize,
    pub cache: &'a mut SequenceCache,
}

pub struct TextModel {
    config: TextConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    inv_freq: Vec<f32>,
}

impl TextModel {
    pub fn load(
        w: &Weights,
        prefix: &str,
        config: &TextConfig,
    ) -> std::result::Result<Self, LoadError> {
        let h = config.hidden_size;
        let q_dim = config.num_attention_heads * config.head_dim;
        let kv_dim = config.num_key_value_heads * config.head_dim;
        let eps = config.rms_norm_eps;
        let embed_tokens = w.get(
            &format!("{prefix}.embed_tokens.weight"),
            (config.vocab_size, h),
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("{prefix}.layers.{i}");
                Ok(DecoderLayer {
                    input_norm: RmsNorm::load(w, &format!("{l}.input_layernorm.weight"), h, eps)?,
                    attn: AttentionProjections::load(
                        w,
                        &format!("{l}.self_attn"),
                        "o_proj",
                        h,
                        q_dim,
                        kv_dim,
                        false,
                    )?,
                    post_norm: RmsNorm::load(
                        w,
                        &format!("{l}.post_attention_layernorm.weight"),
                        h,
                        eps,
                    )?,
                    mlp: GatedMlp::load(
                        w,
                        &format!("{l}.mlp"),
                        h,
                        config.intermediate_size,
                        h,
                        config.hidden_act,
                    )?,
                })
            })
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        let lm_head = if config.tie_word_embeddings && !w.contains("lm_head.weight") {
            Linear::new(embed_tokens.clone(), None)
        } else {
            Linear::load(w, "lm_head", h, config.vocab_size, false)?
        };
        // inv_freq = 1 / base^(2k/d), a float32 tensor power as in transformers.
        let d = config.head_dim;
        let base = config.rope_theta as f32;
        let inv_freq = (0..d / 2)
            .map(|k| 1.0f32 / base.powf((2 * k) as f32 / d as f32))
            .collect();
        Ok(TextModel {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::load(w, &format!("{prefix}.norm.weight"), h, eps)?,
            lm_head,
            inv_freq,
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// An empty cache for a sequence expected to reach `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> SequenceCache {
        SequenceCache {
            layers: (0..self.layers.len())
                .map(|_| KvCache::new(1, capacity.max(1)))
                .collect(),
        }
    }

    /// `(n, hidden)` embeddings of token ids.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), self.device())?;
        self.embed_tokens.index_select(&ids, 0)
    }

    /// cos and sin `(tokens, head_dim/2)` for the given positions, in f32 then the model dtype.
    fn rotary(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = (positions.len(), half);
        let dev = self.device();
        Ok((
            Tensor::from_vec(cos, shape, dev)?.to_dtype(self.dtype())?,
            Tensor::from_vec(sin, shape, dev)?.to_dtype(self.dtype())?,
        ))
    }

    /// Causal (and sliding-window) additive mask for `t` new queries after `past` cached keys.
    fn causal_mask(&self, t: usize, past: usize) -> Result<Option<Tensor>> {
        let total = past + t;
        let window = self.config.sliding_window.unwrap_or(usize::MAX);
        let visible = |i: usize, j: usize| {
            let q = past + i;
            j <= q && q - j < window
        };
        if t == 1 && total <= window {
            return Ok(None);
        }
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..total).map(move |j| (i, j)))
            .map(|(i, j)| {
                if visible(i, j) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        Tensor::from_vec(mask, (t, total), self.device()).map(Some)
    }

    /// Runs the decoder over packed new tokens `(Σ tokens, hidden)` and returns the logits of
    /// each segment's last token, `(segments, vocab)` in f32.
    pub fn forward(&self, embeds: &Tensor, segments: &mut [Segment<'_>]) -> Result<Tensor> {
        let cfg = &self.config;
        let positions: Vec<usize> = segments
            .iter()
            .flat_map(|s| {
                let start = s.cache.len();
                start..start + s.tokens
            })
            .collect();
        let (cos, sin) = self.rotary(&positions)?;
        let masks = segments
            .iter()
            .map(|s| self.causal_mask(s.tokens, s.cache.len()))
            .collect::<Result<Vec<_>>>()?;
        let scale = (cfg.head_dim as f64).powf(-0.5);
        let mut hidden = embeds.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            let x = layer.input_norm.forward(&hidden)?;
            let q = split_heads(
                &layer.attn.q.forward(&x)?,
                cfg.num_attention_heads,
                cfg.head_dim,
            )?;
            let k = split_heads(
                &layer.attn.k.forward(&x)?,
                cfg.num_key_value_heads,
                cfg.head_dim,
            )?;
            let v = split_heads(
                &layer.attn.v.forward(&x)?,
                cfg.num_key_value_heads,
                cfg.head_dim,
            )?;
            // rope works on (batch, heads, tokens, dim) with one position per token.
            let q = candle_nn::rotary_emb::rope(&q.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(&k.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let mut outputs = Vec::with_capacity(segments.len());
            let mut offset = 0;
            for (segment, mask) in segments.iter_mut().zip(&masks) {
                let t = segment.tokens;
                let qs = q.narrow(1, offset, t)?.contiguous()?;
                let ks = k.narrow(1, offset, t)?.contiguous()?;
                let vs = v.narrow(1, offset, t)?.contiguous()?;
                let (k_all, v_all) = segment.cache.layers[li].append(&ks, &vs)?;
                let (k_all, v_all) = (k_all.contiguous()?, v_all.contiguous()?);
                outputs.push(attention(&qs, &k_all, &v_all, scale, mask.as_ref())?);
                offset += t;
            }
            let a = Tensor::cat(&outputs, 0)?;
            hidden = (hidden + layer.attn.o.forward(&a)?)?;
            let x = layer.post_norm.forward(&hidden)?;
            hidden = (&hidden + layer.mlp.forward(&x)?)?;
        }
        let mut last = Vec::with_capacity(segments.len());
        let mut end = 0;
        for segment in segments.iter() {
            end += segment.tokens;
            last.push((end - 1) as u32);
        }
        let last = Tensor::from_vec(last, segments.len(), self.device())?;
        let hidden = self.norm.forward(&hidden.index_select(&last, 0)?)?;
        self.lm_head.forward(&hidden)?.to_dtype(DType::F32)
    }
}
