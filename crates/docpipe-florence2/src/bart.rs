//! The BART encoder-decoder of Florence-2 (`BartModel` with a tied `lm_head`): learned
//! positions offset by 2, `layernorm_embedding`, post-LayerNorm layers, no final norm.
//!
//! The encoder runs one request at a time on `(tokens, d_model)` rows. The decoder steps all
//! rows of a batch at once (a row is a request's beam, or the request itself when greedy):
//! every row is at the same position, so the self-attention caches of the batch are one
//! `(rows, heads, t, head_dim)` tensor per layer, and each request's rows attend to its own
//! encoder output. All layers come from `docpipe_vlm::nn`, whose matmuls give a row the same
//! bits whatever rows come with it, so a request's tokens do not depend on its batch.

use candle_core::{DType, Device, Module, Result, Tensor};
use docpipe_vlm::config::Activation;
use docpipe_vlm::nn::{
    attention, batched_attention, split_heads, AttentionProjections, LayerNorm, Linear, Rows,
};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::TextConfig;

/// BART's learned position tables start at row 2.
const POSITION_OFFSET: usize = 2;
/// PyTorch's `nn.LayerNorm` default.
const LAYER_NORM_EPS: f64 = 1e-5;

/// The four projections of an attention block and its head split.
#[derive(Debug, Clone)]
struct Attention {
    proj: AttentionProjections,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, dim: usize, heads: usize) -> std::result::Result<Self, LoadError> {
        Ok(Attention {
            proj: AttentionProjections::load(w, "out_proj", dim, dim, dim, true)?,
            heads,
            head_dim: dim / heads,
        })
    }

    fn scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }

    fn split(&self, xs: &Tensor) -> Result<Tensor> {
        split_heads(xs, self.heads, self.head_dim)
    }

    /// Keys and values of `xs` as `(heads, tokens, head_dim)`.
    fn keys_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = self.proj.kv(xs)?;
        Ok((self.split(&k)?, self.split(&v)?))
    }

    /// Bidirectional self-attention over one sequence.
    fn self_attention(&self, xs: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.proj.qkv(xs, Rows::Packed)?;
        let (q, k, v) = (self.split(&q)?, self.split(&k)?, self.split(&v)?);
        self.proj
            .o
            .forward(&attention(&q, &k, &v, self.scale(), None)?)
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl FeedForward {
    fn load(
        w: &Weights,
        dim: usize,
        hidden: usize,
        act: Activation,
    ) -> std::result::Result<Self, LoadError> {
        Ok(FeedForward {
            fc1: Linear::load(&w.pp("fc1"), dim, hidden, true)?,
            fc2: Linear::load(&w.pp("fc2"), hidden, dim, true)?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self
            .self_attn_layer_norm
            .forward(&(xs + self.self_attn.self_attention(xs)?)?)?;
        self.final_layer_norm
            .forward(&(&xs + self.ffn.forward(&xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

/// One request's encoder output as each decoder layer's cross-attention keys and values.
#[derive(Debug, Clone)]
pub struct CrossCache {
    layers: Vec<(Tensor, Tensor)>,
}

/// The decoder's self-attention keys and values of every row, per layer:
/// `(rows, heads, t, head_dim)`.
#[derive(Debug, Clone, Default)]
pub struct DecoderCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl DecoderCache {
    /// Keeps the rows `rows` of the cache, in that order (a row may repeat: beams that
    /// continue the same parent).
    pub fn select(&mut self, rows: &[u32]) -> Result<()> {
        let Some((k, _)) = self.layers.first() else {
            return Ok(());
        };
        let index = Tensor::new(rows, k.device())?;
        for (k, v) in &mut self.layers {
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        Ok(())
    }
}

/// The rows of one request in a decoder step.
#[derive(Debug, Clone, Copy)]
pub struct RowGroup<'a> {
    /// Its encoder output.
    pub cross: &'a CrossCache,
    /// How many consecutive rows it has.
    pub rows: usize,
}

/// The encoder, the decoder and the tied output projection.
#[derive(Debug, Clone)]
pub struct Bart {
    embed_tokens: Tensor,
    embed_scale: f64,
    encoder_positions: Tensor,
    encoder_layernorm: LayerNorm,
    encoder_layers: Vec<EncoderLayer>,
    decoder_positions: Tensor,
    decoder_layernorm: LayerNorm,
    decoder_layers: Vec<DecoderLayer>,
    lm_head: Linear,
    max_positions: usize,
}

impl Bart {
    /// The model under `w` (`shared`, `encoder`, `decoder`); `lm_head` is read only when the
    /// config unties it.
    pub fn load(
        config: &TextConfig,
        w: &Weights,
        lm_head: &Weights,
    ) -> std::result::Result<Self, LoadError> {
        let (d, vocab) = (config.d_model, config.vocab_size);
        let table = if w.contains("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let embed_tokens = w.get(table, (vocab, d))?;
        let positions = config.max_position_embeddings + POSITION_OFFSET;
        let act = config.activation_function;
        let norm = |w: &Weights| LayerNorm::load(w, d, LAYER_NORM_EPS);
        let enc = w.pp("encoder");
        let encoder_layers = (0..config.encoder_layers)
            .map(|i| {
                let l = enc.pp(format!("layers.{i}"));
                Ok(EncoderLayer {
                    self_attn: Attention::load(
                        &l.pp("self_attn"),
                        d,
                        config.encoder_attention_heads,
                    )?,
                    self_attn_layer_norm: norm(&l.pp("self_attn_layer_norm"))?,
                    ffn: FeedForward::load(&l, d, config.encoder_ffn_dim, act)?,
                    final_layer_norm: norm(&l.pp("final_layer_norm"))?,
                })
            })
            .collect::<std::result::Result<_, LoadError>>()?;
        let dec = w.pp("decoder");
        let decoder_layers = (0..config.decoder_layers)
            .map(|i| {
                let l = dec.pp(format!("layers.{i}"));
                let heads = config.decoder_attention_heads;
                Ok(DecoderLayer {
                    self_attn: Attention::load(&l.pp("self_attn"), d, heads)?,
                    self_attn_layer_norm: norm(&l.pp("self_attn_layer_norm"))?,
                    encoder_attn: Attention::load(&l.pp("encoder_attn"), d, heads)?,
                    encoder_attn_layer_norm: norm(&l.pp("encoder_attn_layer_norm"))?,
                    ffn: FeedForward::load(&l, d, config.decoder_ffn_dim, act)?,
                    final_layer_norm: norm(&l.pp("final_layer_norm"))?,
                })
            })
            .collect::<std::result::Result<_, LoadError>>()?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed_tokens.clone(), None)
        } else {
            Linear::load(lm_head, d, vocab, false)?
        };
        Ok(Bart {
            embed_scale: if config.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            encoder_positions: enc.get("embed_positions.weight", (positions, d))?,
            encoder_layernorm: norm(&enc.pp("layernorm_embedding"))?,
            encoder_layers,
            decoder_positions: dec.get("embed_positions.weight", (positions, d))?,
            decoder_layernorm: norm(&dec.pp("layernorm_embedding"))?,
            decoder_layers,
            embed_tokens,
            lm_head,
            max_positions: config.max_position_embeddings,
        })
    }

    /// How many positions the encoder and the decoder each have.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The token embeddings of `ids`, scaled when the config says so: `(ids, d_model)`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let index = Tensor::new(ids, self.embed_tokens.device())?;
        self.embed_tokens.index_select(&index, 0)? * self.embed_scale
    }

    /// The encoder output of one sequence of input embeddings `(tokens, d_model)`.
    pub fn encode(&self, embeds: &Tensor) -> Result<Tensor> {
        let n = embeds.dim(0)?;
        let xs = (embeds + self.encoder_positions.narrow(0, POSITION_OFFSET, n)?)?;
        let mut xs = self.encoder_layernorm.forward(&xs)?;
        for layer in &self.encoder_layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }

    /// Each decoder layer's cross-attention keys and values of an encoder output.
    pub fn cross_cache(&self, encoded: &Tensor) -> Result<CrossCache> {
        let layers = self
            .decoder_layers
            .iter()
            .map(|l| l.encoder_attn.keys_values(encoded))
            .collect::<Result<_>>()?;
        Ok(CrossCache { layers })
    }

    /// One decoder step: `tokens[r]` at `position` for every row, appending to `cache`.
    /// Rows are grouped by request, in `groups` order. Returns the logits `(rows, vocab)`.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        position: usize,
        cache: &mut DecoderCache,
        groups: &[RowGroup<'_>],
    ) -> Result<Tensor> {
        let rows = tokens.len();
        let pos = self
            .decoder_positions
            .narrow(0, POSITION_OFFSET + position, 1)?;
        let xs = self.embed(tokens)?.broadcast_add(&pos)?;
        let mut xs = self.decoder_layernorm.forward(&xs)?;
        let device: &Device = xs.device();
        let mask = Tensor::zeros((rows, 1, 1, position + 1), DType::F32, device)?;
        let first = cache.layers.is_empty();
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let (q, k, v) = attn.proj.qkv(&xs, Rows::Packed)?;
            let q = attn.split(&q)?;
            let (hd, heads) = (attn.head_dim, attn.heads);
            let k = k.reshape((rows, heads, 1, hd))?;
            let v = v.reshape((rows, heads, 1, hd))?;
            let (k, v) = if first {
                (k, v)
            } else {
                let (pk, pv) = &cache.layers[i];
                (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?)
            };
            let a = batched_attention(&q, &k, &v, attn.scale(), &mask)?;
            if first {
                cache.layers.push((k, v));
            } else {
                cache.layers[i] = (k, v);
            }
            xs = layer
                .self_attn_layer_norm
                .forward(&(&xs + attn.proj.o.forward(&a)?)?)?;

            let cross = &layer.encoder_attn;
            let q = cross.split(&cross.proj.q(&xs)?)?;
            let mut start = 0;
            let mut parts = Vec::with_capacity(groups.len());
            for group in groups {
                let (ck, cv) = &group.cross.layers[i];
                let q = q.narrow(1, start, group.rows)?.contiguous()?;
                parts.push(attention(&q, ck, cv, cross.scale(), None)?);
                start += group.rows;
            }
            let c = Tensor::cat(&parts, 0)?;
            xs = layer
                .encoder_attn_layer_norm
                .forward(&(&xs + cross.proj.o.forward(&c)?)?)?;
            xs = layer
                .final_layer_norm
                .forward(&(&xs + layer.ffn.forward(&xs)?)?)?;
        }
        self.lm_head.forward(&xs)?.to_dtype(DType::F32)
    }
}
