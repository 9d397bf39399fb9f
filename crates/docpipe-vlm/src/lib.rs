//! What the Idefics model families share, on candle, laid out like candle-transformers: a
//! config struct per component deserialized with serde ([`config`]), a weights view with
//! prefixes ([`weights::Weights::pp`]), and a constructor per component taking its config and
//! its weights view.
//!
//! | module | component |
//! |---|---|
//! | [`config`] | SigLIP and decoder settings, generation and normalization settings, the defaults mechanism |
//! | [`weights`] | memory-mapped safetensors through prefixed views; errors name tensor and file |
//! | [`nn`] | linear, norms, SwiGLU, grouped-query attention, batch-independent matmuls |
//! | [`flash`] | FlashAttention-2 over packed sequences on CUDA (feature `flash-attn`) |
//! | [`decode_product`] | a decoding step's rows times a weight matrix on the CPU, read once per step |
//! | [`vision`] | the SigLIP NaViT tower (spec C; G.4) |
//! | [`rope`], [`text`] | the Mistral / Llama 3.1 decoder (spec E.3; G.4) |
//! | [`kv_cache`], [`generation`] | batched greedy decoding with shared page prefixes |
//! | [`session`] | continuous batching: a running batch that admits requests between steps |
//! | [`image`], [`resample`] | decoding, RGB conversion, normalization, Pillow's resampler |
//! | [`chat`] | chat template and tokenizer |
//! | [`request`] | prepared requests, page cache, a batch's generation |
//! | [`model`] | the assembled model of either family ([`model::IdeficsModel`]) over what a family supplies ([`model::Family`]) |
//! | [`request_file`] | the JSONL request format of `docpipe generate` |
//! | [`device`], [`error`] | devices, dtypes, the typed errors |
//! | [`placement`] | the devices of a replica that spans several, layer by layer |
//! | `fixture_check` | the families' fixture-test comparisons (feature `fixture-testing`, dev-dependencies only) |
//!
//! A family crate (`docpipe-idefics2`, `docpipe-idefics3`) adds its config, image processor,
//! prompt expansion and connector, and names its model as [`model::IdeficsModel`] over its
//! [`model::Family`] implementation. What transformers computes is
//! specified in `docs/models/idefics2-spec.md` (section G for Idefics3); comments cite its
//! sections ("spec A.4").
//!
//! A request's tokens do not depend on the other requests of its batch (bit for bit on CPU):
//! prompts of a batch are packed end to end with attention per sequence, a prompt with images is
//! always prefilled in two parts (up to its last image token, then the rest) so that several
//! questions about one page share the first, the decoding cache pads rows only on the right
//! ([`kv_cache`]) whenever a row joins, small matmuls are padded to the CPU backend's general
//! kernel ([`nn`]), a decoding step's rows go through a product whose sums do not depend on the row
//! count ([`decode_product`]), and finished sequences leave the batch. On a GPU, cuBLAS picks
//! kernels by shape, so there a batch can move results by float rounding.

#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod decode_product;
pub mod device;
pub mod error;
#[cfg(feature = "fixture-testing")]
pub mod fixture_check;
pub mod flash;
pub mod generation;
pub mod image;
pub mod kv_cache;
pub mod model;
pub mod nn;
pub mod placement;
pub mod request;
pub mod request_file;
pub mod resample;
pub mod rope;
pub mod session;
pub mod text;
pub mod vision;
pub mod weights;

pub use device::{candle_device, candle_dtype, candle_placement};
pub use error::{DeviceError, ImageError, ImageLoadError, LoadError, PromptError};
