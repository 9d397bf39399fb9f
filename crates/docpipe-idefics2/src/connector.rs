//! The connector between the towers (`model.connector`, spec D): a SwiGLU modality projection
//! from vision width to text width, then a Perceiver resampler that turns any number of
//! patches into `n_latents` tokens.

use candle_core::{Module, Result, Tensor};
use docpipe_vlm::nn::{
    per_segment, unmasked_attention, AttentionProjections, GatedMlp, Heads, RmsNorm,
};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;

use crate::config::{Idefics2Config, PerceiverConfig};

/// One perceiver layer (`perceiver_resampler.layers.N`, spec D.2).
struct PerceiverLayer {
    latents_norm: RmsNorm,
    context_norm: RmsNorm,
    attn: AttentionProjections,
    post_norm: RmsNorm,
    mlp: GatedMlp,
}

impl PerceiverLayer {
    fn new(config: &PerceiverConfig, w: &Weights) -> std::result::Result<Self, LoadError> {
        let (h, eps) = (config.hidden_size, config.rms_norm_eps);
        let (heads, kv_heads) = (config.n_heads, config.num_key_value_heads);
        Ok(PerceiverLayer {
            latents_norm: RmsNorm::load(&w.pp("input_latents_norm"), h, eps)?,
            context_norm: RmsNorm::load(&w.pp("input_context_norm"), h, eps)?,
            attn: AttentionProjections::grouped(w, h, heads, kv_heads, config.head_dim)?,
            post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), h, eps)?,
            mlp: GatedMlp::load(&w.pp("mlp"), h, 4 * h, h, config.hidden_act)?,
        })
    }
}

/// Modality projection and perceiver resampler.
pub struct Connector {
    config: PerceiverConfig,
    projection: GatedMlp,
    latents: Tensor,
    layers: Vec<PerceiverLayer>,
    norm: RmsNorm,
}

impl Connector {
    /// The connector of `config` from the view of `model.connector`.
    pub fn new(config: &Idefics2Config, w: &Weights) -> std::result::Result<Self, LoadError> {
        let pc = &config.family;
        let projection = GatedMlp::load(
            &w.pp("modality_projection"),
            config.vision.hidden_size,
            config.text.intermediate_size,
            config.text.hidden_size,
            config.text.hidden_act,
        )?;
        let r = w.pp("perceiver_resampler");
        let layers = r.pp("layers");
        let layers = (0..pc.depth)
            .map(|i| PerceiverLayer::new(pc, &layers.pp(i)))
            .collect::<std::result::Result<Vec<_>, LoadError>>()?;
        Ok(Connector {
            config: pc.clone(),
            projection,
            latents: r.get("latents", (pc.n_latents, pc.hidden_size))?,
            layers,
            norm: RmsNorm::load(&r.pp("norm"), pc.hidden_size, pc.rms_norm_eps)?,
        })
    }

    /// Image features for the packed valid patches `(Σ P, vision hidden)` of images of `lens`
    /// patches each: `(images · n_latents, text hidden)`, the latents of each image in order.
    ///
    /// Projections and norms run over all images at once, attention per image (its latents
    /// over its own context and latents), as for one image alone.
    pub fn forward(&self, patches: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let pc = &self.config;
        let n = pc.n_latents;
        let context = self.projection.forward(patches)?;
        let scale = (pc.head_dim as f64).powf(-0.5);
        let mut latents = self.latents.repeat((lens.len(), 1))?;
        let kv_lens: Vec<usize> = lens.iter().map(|len| len + n).collect();
        let q_lens = vec![n; lens.len()];
        let heads = Heads {
            heads: pc.n_heads,
            kv_heads: pc.num_key_value_heads,
            head_dim: pc.head_dim,
        };
        for layer in &self.layers {
            let ln = layer.latents_norm.forward(&latents)?;
            let cn = layer.context_norm.forward(&context)?;
            // Keys and values see each image's context first, then its latents; no mask is
            // needed because only valid patches were encoded.
            let kv_in = per_segment(lens, |i, offset, len| {
                Tensor::cat(&[cn.narrow(0, offset, len)?, ln.narrow(0, i * n, n)?], 0)
            })?;
            let q = layer.attn.q(&ln)?;
            let (k, v) = layer.attn.kv(&kv_in)?;
            let a = unmasked_attention(&q, &k, &v, heads, &q_lens, &kv_lens, scale)?;
            latents = (latents + layer.attn.o.forward(&a)?)?;
            latents = (&latents + layer.mlp.forward(&layer.post_norm.forward(&latents)?)?)?;
        }
        self.norm.forward(&latents)
    }
}
