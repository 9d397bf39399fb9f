//! The Idefics2 model family (HuggingFaceM4/idefics2-8b and checkpoints of the same
//! architecture) on candle, reproducing HF transformers' fp32 greedy outputs.
//!
//! The components both Idefics families use (SigLIP tower, Mistral/Llama decoder, KV cache,
//! batched generation, Pillow resampling, chat template, weights view) live in `docpipe-vlm`;
//! this crate adds what is Idefics2's own, one module per component: [`config`] (serde
//! settings over transformers' class defaults), [`processor`] (quadrant splitting and the
//! shortest/longest-edge resize, spec A), [`prompt`] (`<image>` expansion, spec B),
//! [`connector`] (modality projection and perceiver resampler, spec D); [`model`] assembles
//! them behind `docpipe_core::VisionLanguageModel`.
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
//!   Pillow's resampler (`docpipe_vlm::resample`): `fast_image_resize` 6's convolution
//!   bilinear is off by up to one level against Pillow on the fixtures, enough to move logits
//!   past 1e-3. transformers 5 defaults to a torchvision backend whose pixels differ.
//! - **RGB conversion**: images with alpha are composited onto white (4.x,
//!   `docs/models/idefics2-spec.md` A.2). The fixtures' transformers 5.23 run dropped the
//!   alpha channel of RGBA inputs instead; the fixture tests load RGBA images that way,
//!   explicitly, to compare the rest of the model.
//!
//! Fixture comparisons (`tests/fixtures.rs`, transformers 5.23 references) account for the
//! fake-token space above by checking that the 5.x rule alone explains each differing prompt
//! and then feeding the reference ids.
//!
//! A request's tokens do not depend on the other requests of its batch (bit for bit on CPU);
//! how is described in `docpipe-vlm`.

#![warn(missing_docs)]

pub mod config;
pub mod connector;
pub mod model;
pub mod processor;
pub mod prompt;

pub use docpipe_vlm::request::{DetailedGeneration, PreparedImage};
pub use docpipe_vlm::{
    candle_device, candle_dtype, request_file, DeviceError, ImageError, ImageLoadError, LoadError,
    PromptError,
};
pub use model::{Idefics2Model, Idefics2Request};
