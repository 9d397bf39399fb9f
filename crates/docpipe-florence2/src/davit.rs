//! The DaViT vision tower (`Florence2VisionBackbone`): per stage a convolutional patch
//! embedding, then blocks of a spatial block (window attention) and a channel block
//! (channel-group attention), each with a depthwise-convolution residual and a GELU MLP.
//!
//! One image at a time: a page's features never depend on the other pages of its batch.
//! Feature maps are `(channels, height, width)` for the convolutions and `(tokens, channels)`
//! rows for everything else, the form `docpipe_vlm::nn`'s layers take.

use candle_core::{DType, Module, Result, Tensor, D};
use docpipe_vlm::config::Activation;
use docpipe_vlm::nn::{LayerNorm, Linear};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;
use rayon::prelude::*;

use crate::config::VisionConfig;
use crate::layout::{BlockKind, BlockNames, Layout};

/// PyTorch's `nn.LayerNorm` default.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `(C, H, W)` as `(H·W, C)` rows.
fn to_rows(x: &Tensor) -> Result<Tensor> {
    let (c, h, w) = x.dims3()?;
    x.reshape((c, h * w))?.t()?.contiguous()
}

/// `(H·W, C)` rows as `(C, H, W)`.
fn to_map(rows: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let c = rows.dim(1)?;
    rows.t()?.contiguous()?.reshape((c, h, w))
}

/// A stage's patch embedding: a strided convolution with a LayerNorm over channels before it
/// (later stages) or after it (the first).
#[derive(Debug, Clone)]
struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    norm: LayerNorm,
    stride: usize,
    padding: usize,
    pre_norm: bool,
}

impl PatchEmbed {
    fn load(
        config: &VisionConfig,
        stage: usize,
        w: &Weights,
        layout: Layout,
    ) -> std::result::Result<Self, LoadError> {
        let in_dim = if stage == 0 {
            3
        } else {
            config.embed_dim[stage - 1]
        };
        let out_dim = config.embed_dim[stage];
        let k = config.patch_size[stage];
        let conv = w.pp(layout.patch_conv());
        let pre_norm = config.patch_prenorm[stage];
        Ok(PatchEmbed {
            weight: conv.get("weight", (out_dim, in_dim, k, k))?,
            bias: conv.get("bias", out_dim)?,
            norm: LayerNorm::load(
                &w.pp("norm"),
                if pre_norm { in_dim } else { out_dim },
                LAYER_NORM_EPS,
            )?,
            stride: config.patch_stride[stage],
            padding: config.patch_padding[stage],
            pre_norm,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let norm_channels = |x: &Tensor| -> Result<Tensor> {
            let (_, h, w) = x.dims3()?;
            to_map(&self.norm.forward(&to_rows(x)?)?, h, w)
        };
        let x = if self.pre_norm {
            norm_channels(x)?
        } else {
            x.clone()
        };
        let y = x
            .unsqueeze(0)?
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .squeeze(0)?
            .broadcast_add(&self.bias.reshape(((), 1, 1))?)?;
        if self.pre_norm {
            Ok(y)
        } else {
            norm_channels(&y)
        }
    }
}

/// A 3 × 3 depthwise convolution with zero padding 1.
///
/// On the CPU a direct loop over each channel's rows, channels in parallel: candle runs a
/// grouped convolution as one small convolution per channel, and nine shifted multiply-adds
/// of strided views go through its slow strided path; the depthwise convolutions were most of
/// the tower's time either way. Elsewhere, the nine shifted multiply-adds.
#[derive(Debug, Clone)]
struct DepthwiseConv {
    /// `(C, 9)`: the taps of each channel, row-major.
    taps: Tensor,
    bias: Tensor,
    /// The same taps and bias in f32 on the host, for the CPU loop.
    host_taps: Vec<f32>,
    host_bias: Vec<f32>,
}

impl DepthwiseConv {
    fn load(w: &Weights, dim: usize) -> std::result::Result<Self, LoadError> {
        let weight = w.get("weight", (dim, 1, 3, 3))?;
        let bias = w.get("bias", dim)?;
        let host = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        Ok(DepthwiseConv {
            host_taps: host(&weight).map_err(LoadError::Device)?,
            host_bias: host(&bias).map_err(LoadError::Device)?,
            taps: weight.reshape((dim, 9)).map_err(LoadError::Device)?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            self.forward_cpu(x)
        } else {
            self.forward_shifted(x)
        }
    }

    fn forward_cpu(&self, x: &Tensor) -> Result<Tensor> {
        let (c, h, w) = x.dims3()?;
        let input = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut out = vec![0f32; c * h * w];
        out.par_chunks_mut(h * w)
            .zip(input.par_chunks(h * w))
            .enumerate()
            .for_each(|(ch, (out, input))| {
                let taps = &self.host_taps[ch * 9..ch * 9 + 9];
                out.fill(self.host_bias[ch]);
                for y in 0..h {
                    let row = &mut out[y * w..(y + 1) * w];
                    for dy in 0..3 {
                        let Some(src) = (y + dy).checked_sub(1).filter(|&r| r < h) else {
                            continue;
                        };
                        let src = &input[src * w..(src + 1) * w];
                        let [left, mid, right] = [taps[dy * 3], taps[dy * 3 + 1], taps[dy * 3 + 2]];
                        for (o, i) in row[1..].iter_mut().zip(&src[..w - 1]) {
                            *o += left * i;
                        }
                        for (o, i) in row.iter_mut().zip(src) {
                            *o += mid * i;
                        }
                        for (o, i) in row[..w - 1].iter_mut().zip(&src[1..]) {
                            *o += right * i;
                        }
                    }
                }
            });
        Tensor::from_vec(out, (c, h, w), x.device())?.to_dtype(x.dtype())
    }

    fn forward_shifted(&self, x: &Tensor) -> Result<Tensor> {
        let (c, h, w) = x.dims3()?;
        let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
        let mut out = self
            .bias
            .reshape((c, 1, 1))?
            .broadcast_as((c, h, w))?
            .contiguous()?;
        for dy in 0..3 {
            for dx in 0..3 {
                let tap = self.taps.narrow(1, dy * 3 + dx, 1)?.reshape((c, 1, 1))?;
                let shifted = padded.narrow(1, dy, h)?.narrow(2, dx, w)?;
                out = (out + shifted.broadcast_mul(&tap)?)?;
            }
        }
        Ok(out)
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn load(
        w: &Weights,
        dim: usize,
        ratio: f64,
        act: Activation,
    ) -> std::result::Result<Self, LoadError> {
        let hidden = (dim as f64 * ratio) as usize;
        Ok(Mlp {
            fc1: Linear::load(&w.pp("fc1"), dim, hidden, true)?,
            fc2: Linear::load(&w.pp("fc2"), hidden, dim, true)?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(x)?)?)
    }
}

/// Attention over the tokens of each `window × window` window, heads of `dim / heads`
/// channels. The map is padded with zero rows to whole windows first; the padding tokens take
/// part in the attention as transformers computes it (they are not masked) and are cut off
/// after.
#[derive(Debug, Clone)]
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    window: usize,
}

impl WindowAttention {
    fn forward(&self, rows: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let ws = self.window;
        let c = rows.dim(1)?;
        let (pad_h, pad_w) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let x = rows
            .reshape((h, w, c))?
            .pad_with_zeros(0, 0, pad_h)?
            .pad_with_zeros(1, 0, pad_w)?;
        let (nh, nw) = ((h + pad_h) / ws, (w + pad_w) / ws);
        let (windows, tokens, hd) = (nh * nw, ws * ws, c / self.heads);
        let x = x
            .reshape((nh, ws, nw, ws, c))?
            .permute((0, 2, 1, 3, 4))?
            .reshape((windows * tokens, c))?;
        let qkv = self
            .qkv
            .forward(&x)?
            .reshape((windows, tokens, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let part = |i: usize| qkv.get(i)?.reshape((windows * self.heads, tokens, hd));
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let out = candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&v)?
            .reshape((windows, self.heads, tokens, hd))?
            .permute((0, 2, 1, 3))?
            .reshape((windows * tokens, c))?;
        self.proj
            .forward(&out)?
            .reshape((nh, nw, ws, ws, c))?
            .permute((0, 2, 1, 3, 4))?
            .reshape((nh * ws, nw * ws, c))?
            .narrow(0, 0, h)?
            .narrow(1, 0, w)?
            .reshape((h * w, c))
    }
}

/// Attention between the channels of each group, every token a feature, scaled by
/// `tokens^-0.5` (not by the group width).
#[derive(Debug, Clone)]
struct ChannelAttention {
    qkv: Linear,
    proj: Linear,
    groups: usize,
}

impl ChannelAttention {
    fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        let (n, c) = rows.dims2()?;
        let cg = c / self.groups;
        let qkv = self
            .qkv
            .forward(rows)?
            .reshape((n, 3, self.groups, cg))?
            .permute((1, 2, 3, 0))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = (q.matmul(&k.t()?)? * (n as f64).powf(-0.5))?;
        let out = candle_nn::ops::softmax(&scores, D::Minus1)?
            .matmul(&v)?
            .permute((2, 0, 1))?
            .reshape((n, c))?;
        self.proj.forward(&out)
    }
}

/// The attention of a block, by kind.
#[derive(Debug, Clone)]
enum Mixer {
    Window(WindowAttention),
    Channel(ChannelAttention),
}

/// A spatial or channel block: `x + dwconv(x)`, then `x + attention(norm(x))`, then
/// `x + dwconv(x)`, then `x + mlp(norm(x))`.
#[derive(Debug, Clone)]
struct Block {
    conv1: DepthwiseConv,
    norm1: LayerNorm,
    mixer: Mixer,
    conv2: DepthwiseConv,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(
        config: &VisionConfig,
        stage: usize,
        kind: BlockKind,
        w: &Weights,
        names: &BlockNames,
    ) -> std::result::Result<Self, LoadError> {
        let dim = config.embed_dim[stage];
        let attn = w.pp(&names.attn);
        let qkv = Linear::load(&attn.pp("qkv"), dim, 3 * dim, config.qkv_bias)?;
        let proj = Linear::load(&attn.pp("proj"), dim, dim, true)?;
        let mixer = match kind {
            BlockKind::Spatial => Mixer::Window(WindowAttention {
                qkv,
                proj,
                heads: config.num_heads[stage],
                window: config.window_size,
            }),
            BlockKind::Channel => Mixer::Channel(ChannelAttention {
                qkv,
                proj,
                groups: config.num_groups[stage],
            }),
        };
        Ok(Block {
            conv1: DepthwiseConv::load(&w.pp(&names.conv1), dim)?,
            norm1: LayerNorm::load(&w.pp(&names.norm1), dim, LAYER_NORM_EPS)?,
            mixer,
            conv2: DepthwiseConv::load(&w.pp(&names.conv2), dim)?,
            norm2: LayerNorm::load(&w.pp(&names.norm2), dim, LAYER_NORM_EPS)?,
            mlp: Mlp::load(
                &w.pp(&names.mlp),
                dim,
                config.mlp_ratio,
                config.activation_function,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w) = x.dims3()?;
        let x = (self.conv1.forward(x)? + x)?;
        let rows = to_rows(&x)?;
        let normed = self.norm1.forward(&rows)?;
        let mixed = match &self.mixer {
            Mixer::Window(a) => a.forward(&normed, h, w)?,
            Mixer::Channel(a) => a.forward(&normed)?,
        };
        let x = to_map(&(rows + mixed)?, h, w)?;
        let x = (self.conv2.forward(&x)? + x)?;
        let rows = to_rows(&x)?;
        let rows = (&rows + self.mlp.forward(&self.norm2.forward(&rows)?)?)?;
        to_map(&rows, h, w)
    }
}

/// The whole tower.
#[derive(Debug, Clone)]
pub struct DaVit {
    stages: Vec<(PatchEmbed, Vec<Block>)>,
}

impl DaVit {
    /// The tower under the layout's vision view.
    pub fn load(
        config: &VisionConfig,
        root: &Weights,
        layout: Layout,
    ) -> std::result::Result<Self, LoadError> {
        let w = layout.vision(root);
        let mut stages = Vec::new();
        for stage in 0..config.stages() {
            let embed = PatchEmbed::load(config, stage, &w.pp(format!("convs.{stage}")), layout)?;
            let mut blocks = Vec::new();
            for b in 0..config.depths[stage] {
                let block = w.pp(format!("blocks.{stage}.{b}"));
                for kind in [BlockKind::Spatial, BlockKind::Channel] {
                    blocks.push(Block::load(
                        config,
                        stage,
                        kind,
                        &block.pp(kind.name()),
                        &layout.block(kind),
                    )?);
                }
            }
            stages.push((embed, blocks));
        }
        Ok(DaVit { stages })
    }

    /// The last stage's feature map `(C, H / stride, W / stride)` of one `(3, H, W)` image.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = pixels.clone();
        for (embed, blocks) in &self.stages {
            x = embed.forward(&x)?;
            for block in blocks {
                x = block.forward(&x)?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_cpu_loop_and_the_shifted_sums_are_the_same_convolution() {
        let dev = Device::Cpu;
        let (c, h, w) = (5, 7, 6);
        let taps = Tensor::randn(0f32, 1.0, (c, 9), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let conv = DepthwiseConv {
            host_taps: taps.flatten_all().unwrap().to_vec1().unwrap(),
            host_bias: bias.to_vec1().unwrap(),
            taps: taps.clone(),
            bias,
        };
        let x = Tensor::randn(0f32, 1.0, (c, h, w), &dev).unwrap();
        let a = conv.forward_cpu(&x).unwrap().flatten_all().unwrap();
        let b = conv.forward_shifted(&x).unwrap().flatten_all().unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // The definition, for one interior and one corner pixel.
        let (x, t) = (x.to_vec3::<f32>().unwrap(), taps.to_vec2::<f32>().unwrap());
        let at = |ch: usize, y: usize, xx: usize| {
            let mut sum = conv.host_bias[ch];
            for dy in 0..3 {
                for dx in 0..3 {
                    let (yy, xs) = (y as isize + dy as isize - 1, xx as isize + dx as isize - 1);
                    if (0..h as isize).contains(&yy) && (0..w as isize).contains(&xs) {
                        sum += t[ch][dy * 3 + dx] * x[ch][yy as usize][xs as usize];
                    }
                }
            }
            sum
        };
        let out = conv
            .forward_cpu(&Tensor::new(x.clone(), &dev).unwrap())
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for (ch, y, xx) in [(2, 3, 3), (4, 0, 5)] {
            assert!((out[ch][y][xx] - at(ch, y, xx)).abs() < 1e-5);
        }
    }
}
