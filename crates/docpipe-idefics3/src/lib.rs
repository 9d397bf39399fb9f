//! The Idefics3 model family (`Idefics3ForConditionalGeneration`: HuggingFaceM4's
//! Idefics3-8B-Llama3 and HuggingFaceTB's SmolVLM checkpoints) on candle, reproducing
//! transformers 5.23's fp32 greedy outputs with its PIL image processor.
//!
//! The SigLIP tower, the Llama decoder (llama3 rope), the KV cache, batched generation with
//! page-prefix sharing, Pillow's LANCZOS, the chat template and the weights view come from
//! `docpipe-vlm`; this crate adds what is Idefics3's own, one module per component:
//! [`config`] (serde settings over transformers' class defaults, hub and transformers 5
//! layouts), [`processor`] (longest-edge resize, tiles and the global image), [`prompt`]
//! (`<row_r_col_c>` / `<global-img>` expansion), [`connector`] (pixel shuffle and one linear
//! projection); [`model`] assembles them behind `docpipe_core::VisionLanguageModel`.
//!
//! The reference is `docs/models/idefics2-spec.md` section G as corrected by
//! `fixtures/idefics3/README.md` for transformers 5.23, which this crate follows where they
//! disagree: RGB conversion (alpha composited onto white) before any resize, float64
//! truncation and the `max(.., 1)` floor in the resize rule, the double BOS of the Llama 3
//! tokenizer, `"\n\n"` as one token only where the vocabulary merges it, and a generated
//! `<image>` embedded like any other token (image features replace prompt tokens only).
//! Idefics3 bans no tokens; eos is any id of `generation_config.json`'s list.

#![warn(missing_docs)]

pub mod config;
pub mod connector;
pub mod model;
pub mod processor;
pub mod prompt;

pub use docpipe_vlm::request::{DetailedGeneration, PreparedImage};
pub use model::{Idefics3Model, Idefics3Request};
