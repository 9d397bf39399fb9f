//! The Florence-2 model family (`Florence2ForConditionalGeneration`, e.g.
//! HuggingFaceM4/Florence-2-DocVQA) on candle, reproducing transformers 5.23's fp32 outputs:
//! beam search as the checkpoints' generation configs ask, greedy when `num_beams` is 1.
//!
//! One module per component, as candle-transformers lays models out: [`config`] (serde
//! settings over transformers' class defaults, both `config.json` layouts), [`layout`] (the
//! hub's remote-code tensor names and transformers' native ones), [`processor`] (squash
//! resize, normalization, the task-prompt table, tokenization), [`davit`] (the vision tower),
//! [`projector`] (positions, mean token, projection), [`bart`] (encoder and cached decoder),
//! [`beam`] (logits processors, greedy and beam search); [`model`] assembles them behind
//! `docpipe_core::VisionLanguageModel`.
//!
//! Requests have one image and text; the text goes through the processor's task table, so
//! `<OCR>` becomes its question while the DocVQA fine-tune's `"<DocVQA>" + question` stays
//! text. `token_ids` are the ids generated after the decoder start token, led by the forced
//! BOS, as transformers' `generate` returns them.

#![warn(missing_docs)]

mod attention;
pub mod bart;
pub mod beam;
pub mod config;
pub mod davit;
pub mod layout;
pub mod model;
pub mod processor;
pub mod projector;

pub use docpipe_vlm::request::DetailedGeneration;
pub use model::{Florence2Model, Florence2Request};
