//! The DaViT vision tower (`Florence2VisionBackbone`): per stage a convolutional patch
//! embedding, then blocks of a spatial block (window attention) and a channel block
//! (channel-group attention), each with a depthwise-convolution residual and a GELU MLP.
//!
//! One image at a time: a page's features never depend on the other pages of its batch.
//! Inside a stage the features stay `(tokens, channels)` rows in raster order, the form
//! `docpipe_vlm::nn`'s layers take, and the depthwise convolutions and window partitions work
//! on that layout directly: a block moves its features between layouts once per attention
//! (the head split) instead of four times. Only the strided patch embeddings between stages
//! see a `(channels, height, width)` map.

use candle_core::{
    CpuStorage, CustomOp1, DType, Layout as TensorLayout, Module, Result, Shape, Tensor,
};
use docpipe_vlm::config::Activation;
use docpipe_vlm::nn::{cpu_f32, LayerNorm, Linear};
use docpipe_vlm::weights::Weights;
use docpipe_vlm::LoadError;
use rayon::prelude::*;

use crate::attention::attention;
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

/// A feature map as `(height · width, channels)` rows in raster order.
#[derive(Debug, Clone)]
pub struct FeatureRows {
    /// `(height · width, channels)`.
    pub rows: Tensor,
    /// Rows of the map.
    pub height: usize,
    /// Columns of the map.
    pub width: usize,
}

impl FeatureRows {
    /// The rows of a `(C, H, W)` map.
    fn from_map(map: &Tensor) -> Result<Self> {
        let (_, height, width) = map.dims3()?;
        Ok(FeatureRows {
            rows: to_rows(map)?,
            height,
            width,
        })
    }
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

    /// The stage's input (pixels, or the previous stage's features) to its feature rows.
    fn forward(&self, x: &FeatureRows) -> Result<FeatureRows> {
        let rows = if self.pre_norm {
            self.norm.forward(&x.rows)?
        } else {
            x.rows.clone()
        };
        let y = to_map(&rows, x.height, x.width)?
            .unsqueeze(0)?
            .conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .squeeze(0)?
            .broadcast_add(&self.bias.reshape(((), 1, 1))?)?;
        let y = FeatureRows::from_map(&y)?;
        if self.pre_norm {
            Ok(y)
        } else {
            Ok(FeatureRows {
                rows: self.norm.forward(&y.rows)?,
                ..y
            })
        }
    }
}

/// A 3 × 3 depthwise convolution with zero padding 1, added to its input: both of a block's
/// convolutions are residual, `x + conv(x)`. It works on feature rows.
///
/// On the CPU a direct loop: an output row of the map is the bias plus nine shifted input rows,
/// each scaled per channel, vectorized along the contiguous channels and parallel over rows.
/// candle runs a grouped convolution as one small convolution per channel, and nine shifted
/// multiply-adds of strided views go through its slow strided path; the depthwise
/// convolutions were most of the tower's time either way. Elsewhere, those nine shifted
/// multiply-adds.
#[derive(Debug, Clone)]
struct DepthwiseConv {
    /// `(9, C)`: tap `dy · 3 + dx` of every channel.
    taps: Tensor,
    bias: Tensor,
    /// The same taps (`(9, C)`, row-major) and bias in f32 on the host, for the CPU loop.
    host_taps: Vec<f32>,
    host_bias: Vec<f32>,
}

impl DepthwiseConv {
    fn load(w: &Weights, dim: usize) -> std::result::Result<Self, LoadError> {
        let weight = w.get("weight", (dim, 1, 3, 3))?;
        let bias = w.get("bias", dim)?;
        Self::new(&weight, bias).map_err(LoadError::Device)
    }

    /// From PyTorch's `(C, 1, 3, 3)` weight.
    fn new(weight: &Tensor, bias: Tensor) -> Result<Self> {
        let taps = weight.reshape((bias.dim(0)?, 9))?.t()?.contiguous()?;
        let host = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        Ok(DepthwiseConv {
            host_taps: host(&taps)?,
            host_bias: host(&bias)?,
            taps,
            bias,
        })
    }

    /// `rows + conv(rows)` for the `(h · w, C)` rows of an `h × w` map.
    fn forward(&self, rows: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        if rows.device().is_cpu() {
            let op = ResidualDepthwiseCpu {
                conv: self,
                height: h,
                width: w,
            };
            rows.to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(&op)?
                .to_dtype(rows.dtype())
        } else {
            self.forward_shifted(rows, h, w)
        }
    }

    fn forward_shifted(&self, rows: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let c = rows.dim(1)?;
        let map = rows.reshape((h, w, c))?;
        let padded = map.pad_with_zeros(0, 1, 1)?.pad_with_zeros(1, 1, 1)?;
        let mut out = self
            .bias
            .reshape((1, 1, c))?
            .broadcast_as((h, w, c))?
            .contiguous()?;
        for dy in 0..3 {
            for dx in 0..3 {
                let tap = self.taps.get(dy * 3 + dx)?.reshape((1, 1, c))?;
                let shifted = padded.narrow(0, dy, h)?.narrow(1, dx, w)?;
                out = (out + shifted.broadcast_mul(&tap)?)?;
            }
        }
        (out + map)?.reshape((h * w, c))
    }
}

/// The CPU loop of [`DepthwiseConv::forward`], as a candle op so that it reads the input in
/// place and its output becomes the tensor without another copy. Input: contiguous f32 rows.
struct ResidualDepthwiseCpu<'a> {
    conv: &'a DepthwiseConv,
    height: usize,
    width: usize,
}

impl CustomOp1 for ResidualDepthwiseCpu<'_> {
    fn name(&self) -> &'static str {
        "florence2-residual-depthwise-conv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &TensorLayout) -> Result<(CpuStorage, Shape)> {
        let input = cpu_f32(storage, layout, self.name())?;
        let (h, w) = (self.height, self.width);
        let c = self.conv.host_bias.len();
        if input.len() != h * w * c {
            candle_core::bail!(
                "{}: {} values for {h} × {w} × {c}",
                self.name(),
                input.len()
            );
        }
        let (taps, bias) = (&self.conv.host_taps, &self.conv.host_bias);
        let line = w * c;
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(line).enumerate().for_each(|(y, row)| {
            row.chunks_exact_mut(c)
                .for_each(|pixel| pixel.copy_from_slice(bias));
            for dy in 0..3 {
                let Some(src) = (y + dy).checked_sub(1).filter(|&r| r < h) else {
                    continue;
                };
                let src = &input[src * line..(src + 1) * line];
                for dx in 0..3 {
                    let tap = &taps[(dy * 3 + dx) * c..(dy * 3 + dx + 1) * c];
                    // Output column x reads input column x + dx - 1.
                    let (to, from) = match dx {
                        0 => (&mut row[c..], &src[..line - c]),
                        1 => (&mut row[..], src),
                        _ => (&mut row[..line - c], &src[c..]),
                    };
                    for (o, i) in to.chunks_exact_mut(c).zip(from.chunks_exact(c)) {
                        for ((o, i), t) in o.iter_mut().zip(i).zip(tap) {
                            *o += t * i;
                        }
                    }
                }
            }
            for (o, i) in row.iter_mut().zip(&input[y * line..(y + 1) * line]) {
                *o += i;
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
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
///
/// The projections are row-wise, so they run on the rows in raster order; one copy then takes
/// them to windows and heads at once, and one takes the heads' outputs back to raster order
/// (transformers partitions the map into windows before and merges it after, two more copies).
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
        let (ph, pw) = (h + pad_h, w + pad_w);
        let padded = pad_h + pad_w > 0;
        let x = if padded {
            rows.reshape((h, w, c))?
                .pad_with_zeros(0, 0, pad_h)?
                .pad_with_zeros(1, 0, pad_w)?
                .reshape((ph * pw, c))?
        } else {
            rows.clone()
        };
        let (nh, nw) = (ph / ws, pw / ws);
        let (windows, tokens, hd) = (nh * nw, ws * ws, c / self.heads);
        // (window row, row in window, window column, column in window, q|k|v, head, channel)
        // to (q|k|v, window row, window column, head, row in window, column in window, channel).
        let qkv = self
            .qkv
            .forward(&x)?
            .reshape(vec![nh, ws, nw, ws, 3, self.heads, hd])?
            .permute(vec![4, 0, 2, 5, 1, 3, 6])?
            .contiguous()?;
        let part = |i: usize| qkv.get(i)?.reshape((windows * self.heads, tokens, hd));
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let out = attention(&q, &k, &v, (hd as f64).powf(-0.5))?
            .reshape((nh, nw, self.heads, ws, ws, hd))?
            .permute((0, 3, 1, 4, 2, 5))?
            .reshape((ph * pw, c))?;
        let out = self.proj.forward(&out)?;
        if padded {
            out.reshape((ph, pw, c))?
                .narrow(0, 0, h)?
                .narrow(1, 0, w)?
                .reshape((h * w, c))
        } else {
            Ok(out)
        }
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
        let out = attention(&q, &k, &v, (n as f64).powf(-0.5))?
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

    /// The block's output rows.
    fn forward(&self, x: &FeatureRows) -> Result<Tensor> {
        let (h, w) = (x.height, x.width);
        let x = self.conv1.forward(&x.rows, h, w)?;
        let normed = self.norm1.forward(&x)?;
        let mixed = match &self.mixer {
            Mixer::Window(a) => a.forward(&normed, h, w)?,
            Mixer::Channel(a) => a.forward(&normed)?,
        };
        let x = self.conv2.forward(&(x + mixed)?, h, w)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
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

    /// The last stage's features of one `(3, H, W)` image: `(H / stride) · (W / stride)` rows.
    pub fn forward(&self, pixels: &Tensor) -> Result<FeatureRows> {
        let mut x = FeatureRows::from_map(pixels)?;
        for (embed, blocks) in &self.stages {
            x = embed.forward(&x)?;
            for block in blocks {
                x.rows = block.forward(&x)?;
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
    fn the_cpu_loop_and_the_shifted_sums_are_the_same_residual_convolution() {
        let dev = Device::Cpu;
        let (c, h, w) = (5, 7, 6);
        let weight = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let conv = DepthwiseConv::new(&weight, bias.clone()).unwrap();
        let rows = Tensor::randn(0f32, 1.0, (h * w, c), &dev).unwrap();
        let cpu = conv.forward(&rows, h, w).unwrap();
        let shifted = conv.forward_shifted(&rows, h, w).unwrap();
        let diff = (&cpu - shifted).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // The definition, for an interior pixel, a corner and an edge.
        let (x, t) = (
            rows.to_vec2::<f32>().unwrap(),
            weight.reshape((c, 9)).unwrap().to_vec2::<f32>().unwrap(),
        );
        let b = bias.to_vec1::<f32>().unwrap();
        let at = |ch: usize, y: usize, xx: usize| {
            let mut sum = b[ch];
            for dy in 0..3 {
                for dx in 0..3 {
                    let (yy, xs) = (y as isize + dy as isize - 1, xx as isize + dx as isize - 1);
                    if (0..h as isize).contains(&yy) && (0..w as isize).contains(&xs) {
                        sum += t[ch][dy * 3 + dx] * x[yy as usize * w + xs as usize][ch];
                    }
                }
            }
            sum + x[y * w + xx][ch]
        };
        let out = cpu.to_vec2::<f32>().unwrap();
        for (ch, y, xx) in [(2, 3, 3), (4, 0, 5), (0, 6, 2)] {
            assert!((out[y * w + xx][ch] - at(ch, y, xx)).abs() < 1e-5);
        }
    }
}
