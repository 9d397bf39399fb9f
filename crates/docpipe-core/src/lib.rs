//! Types that cross docpipe's stage boundaries.
//!
//! Every stage (source → render → prepare → infer → sink) talks to the next one through the
//! types here rather than tuples of strings, so that a page always knows which document it came
//! from and a failure always names the stage, the document and the page it concerns.

#![warn(missing_docs)]

mod chat;
mod device;
mod document;
mod failure;
mod model;
mod shard;
mod stable_hash;

pub use chat::{ChatMessage, ChatRequest, ContentItem, FinishReason, Generation};
pub use device::{DeviceGroup, DeviceGroupError, DeviceSpec, Dtype, UnknownDevice, UnknownDtype};
pub use document::{DocumentRef, PageImage, Question};
pub use failure::{Failure, Stage};
pub use model::{
    FinishedRequest, GenerationSession, ModelError, RequestCost, RequestKey, VisionLanguageModel,
};
pub use shard::{shard_of, InvalidShard, Shard};
pub use stable_hash::fnv1a64;
