//! Types that cross docpipe's stage boundaries.
//!
//! Every stage (source → render → prepare → infer → sink) talks to the next one through the
//! types here rather than tuples of strings, so that a page always knows which document it came
//! from and a failure always names the stage, the document and the page it concerns.

mod chat;
mod document;
mod failure;
mod model;

pub use chat::{ChatMessage, ChatRequest, ContentItem, FinishReason, Generation};
pub use document::{DocumentRef, PageImage, Question};
pub use failure::{Failure, Stage};
pub use model::{ModelError, RequestCost, VisionLanguageModel};
