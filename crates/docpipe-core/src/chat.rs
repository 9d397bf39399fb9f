//! What a model is asked and what it answers, independent of any model family: a
//! [`ChatRequest`] (Hugging Face-style chat messages plus the page images they refer to) and
//! its [`Generation`] with the [`FinishReason`]. Families turn requests into their own prompt
//! format; the pipeline only builds requests and reads generations.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One item of an HF-style chat message: `{"type": "text", "text": ...}` or
/// `{"type": "image"}` (optionally with a `path`, as in `docpipe generate` request files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentItem {
    /// Text of the message, inserted into the prompt as written.
    Text {
        /// The text, e.g. a question with the task's prompt template applied.
        text: String,
    },
    /// An image placeholder: the request's next image from [`ChatRequest::images`] goes here.
    Image {
        /// Where to load the image from, relative to the request file (`docpipe generate`); `None`
        /// in requests the pipeline builds, which carry the pixels in [`ChatRequest::images`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
}

/// An HF chat message: a role and a list of content items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks, as the checkpoint's chat template expects it: `user`, `assistant` or `system`.
    /// The pipeline only sends `user` messages.
    pub role: String,
    /// Text and image items, in prompt order.
    pub content: Vec<ContentItem>,
}

/// A model-independent generation request: messages whose image items refer, in order, to
/// `images`. Requests about the same page share the same `Arc`, which lets a model encode a page
/// once for all of its questions.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation, rendered with the checkpoint's chat template plus a generation prompt.
    pub messages: Vec<ChatMessage>,
    /// The pixels for the image items of `messages`, one per item, in order.
    pub images: Vec<Arc<image::RgbImage>>,
    /// Generation stops after this many new tokens (finish reason `length`).
    pub max_new_tokens: usize,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

impl FinishReason {
    /// The value of the `finish_reason` column: `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The result of generating for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Decoded without special tokens.
    pub text: String,
    /// Generated ids, the stopping eos included when there was one.
    pub token_ids: Vec<u32>,
    /// Whether generation reached an end-of-sequence token or `max_new_tokens`.
    pub finish_reason: FinishReason,
    /// Prompt length in tokens, image tokens included (the `prompt_tokens` column).
    pub prompt_tokens: usize,
}
