//! The Idefics1 model family (`IdeficsForVisionText2Text`: HuggingFaceM4/idefics-9b,
//! idefics-80b and their -instruct fine-tunes) on candle, reproducing transformers 5.23's fp32
//! outputs with greedy decoding.
//!
//! One module per component, as candle-transformers lays models out: [`config`] (serde
//! settings over transformers' class defaults), [`processor`] (224 × 224 bicubic squash and
//! CLIP normalization), [`prompt`] (chat messages to the processor's prompt, tokenization, the
//! image each token sees), [`vision`] (the CLIP ViT), [`perceiver`] (the resampler),
//! [`cross_attention`] (the gated cross-attention block), [`text`] (the LLaMA decoder with the
//! blocks interleaved, decoupled embedding and head); [`model`] assembles them behind
//! `docpipe_core::VisionLanguageModel`, on one device or split over several
//! (`docpipe_vlm::placement::Placement`).
//!
//! Unlike Idefics2/3, images do not become prompt tokens: each image is one `<image>` token
//! between `<fake_token_around_image>` delimiters, and the decoder reads the image's perceiver
//! latents through the cross-attention blocks, each token from the most recent image before
//! it. `docs/models/idefics1.md` describes the mapping from transformers.

#![warn(missing_docs)]

pub mod config;
pub mod cross_attention;
pub mod model;
pub mod perceiver;
pub mod processor;
pub mod prompt;
pub mod text;
pub mod vision;

pub use config::MODEL_TYPE;
pub use docpipe_vlm::request::DetailedGeneration;
pub use model::{Idefics1Model, Idefics1Request};
