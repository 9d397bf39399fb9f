//! The Idefics2 model family (HuggingFaceM4/idefics2-8b and checkpoints of the same
//! architecture) on candle, reproducing HF transformers' fp32 greedy outputs.
//!
//! One module per component: [`config`] (checkpoint settings), [`processor`] (images),
//! [`prompt`] (chat template and tokens), [`vision`] (SigLIP tower), [`connector`]
//! (modality projection and perceiver resampler), [`text`] (Mistral decoder), [`kv_cache`] and
//! [`generation`] (batched greedy decoding); [`model`] assembles them behind
//! `docpipe_core::VisionLanguageModel`.
//!
//! What transformers computes, step by step, is specified in `docs/models/idefics2-spec.md`,
//! the port's reference; comments cite its sections ("spec A.4" is section A.4 there).
//!
//! Behaviour choices where transformers versions disagree:
//! - **Perceiver RMSNorm eps.** When `perceiver_config` has no `rms_norm_eps` (the hub config
//!   of idefics2-8b has none), the text model's `rms_norm_eps` is used, as transformers ≤ 4.45
//!   and the original training code did; transformers ≥ 4.46 would use its class default 1e-6.
//!   The perceiver width is always the text width, and when a config declares another width
//!   the text eps is used too, as transformers does.
//! - **Vision position ids** follow the float32 recipe of transformers ≥ 5.21 (also ≤ 4.54 up
//!   to two rows); 4.55–4.57 have a regression that is not reproduced.
//! - **Patch mask**: a patch is valid only when fully inside its image (transformers ≥ 4.45),
//!   which makes features independent of padding. Each image is therefore encoded on its own
//!   at its own size, with no padding at all.
//! - **Prompt text**: `<image>` expansion follows `Idefics2Processor` of transformers 4.4x, the
//!   version the model was trained with. transformers 5 additionally inserts a space after a
//!   closing `<fake_token_around_image>` that is directly followed by a word character (e.g.
//!   `User:<image>What…`), which changes the token ids of such prompts. This crate does not
//!   insert that space.
//! - **Image processor**: the slow PIL path (transformers 4.x default), with an exact port of
//!   Pillow's resampler ([`resample`]): `fast_image_resize` 6's convolution bilinear is off by
//!   up to one level against Pillow on the fixtures, enough to move logits past 1e-3.
//!   transformers 5 defaults to a torchvision backend whose pixels differ.
//! - **RGB conversion**: images with alpha are composited onto white (4.x,
//!   `docs/models/idefics2-spec.md` A.2). The fixtures' transformers 5.23 run dropped the
//!   alpha channel of RGBA inputs instead; the fixture tests load RGBA images that way,
//!   explicitly, to compare the rest of the model.
//!
//! Fixture comparisons (`tests/fixtures.rs`, transformers 5.23 references) account for the
//! fake-token space above by checking that the 5.x rule alone explains each differing prompt
//! and then feeding the reference ids.
//!
//! A request's tokens do not depend on the other requests of its batch (bit for bit on CPU):
//! prompts of a batch are packed end to end with attention per sequence, a prompt with images
//! is always prefilled in two parts (up to its last image token, then the rest) so that
//! several questions about one page share the first, the decoding cache pads rows only on the
//! right ([`kv_cache`]), small matmuls are padded to the CPU backend's general kernel
//! (`nn`), and finished sequences leave the batch. On a GPU, cuBLAS picks kernels by shape, so
//! there a batch can move results by float rounding.

pub mod config;
pub mod connector;
pub mod error;
pub mod generation;
pub mod kv_cache;
pub mod model;
mod nn;
pub mod processor;
pub mod prompt;
pub mod request_file;
pub mod resample;
pub mod text;
pub mod vision;
mod weights;

pub use error::{DeviceError, ImageError, ImageLoadError, LoadError, PromptError};
pub use model::{
    candle_device, candle_dtype, DetailedGeneration, Idefics2Model, Idefics2Request, PreparedImage,
};
