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
    Text {
        text: String,
    },
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
}

/// An HF chat message: a role and a list of content items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Vec<ContentItem>,
}

/// A model-independent generation request: messages whose image items refer, in order, to
/// `images`. Requests about the same page share the same `Arc`, which lets a model encode a page
/// once for all of its questions.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub images: Vec<Arc<image::RgbImage>>,
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
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}
