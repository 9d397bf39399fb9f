//! The one interface between the pipeline and a model family: [`VisionLanguageModel`], with
//! the [`RequestCost`] units batching is budgeted in and the [`ModelError`] kinds the
//! inference pool reacts to. See docs/architecture.md, "The model trait".

use crate::{ChatRequest, Generation};

/// Why a model call failed. The pool reacts differently to each kind: an out-of-memory batch is
/// split and retried, a bad request becomes that request's error row, a device failure retires
/// the replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The request cannot be served by this model (e.g. more images than `<image>` markers).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The batch did not fit in device memory; a smaller batch may.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The device or the model itself failed; the replica should not be used again.
    #[error("device failure: {0}")]
    Device(String),
}

/// What the pipeline needs of a model family: turn a chat request into model inputs (CPU work,
/// done off the inference thread), then generate for a batch of prepared requests.
///
/// The pipeline never knows which family it runs; each family crate implements this trait.
pub trait VisionLanguageModel: Send + Sync {
    /// Model inputs for one request: token ids and preprocessed images.
    type Prepared: Send + Sync + 'static;

    /// Checkpoint name plus a short hash of its config and weights index (the `model` column).
    fn model_id(&self) -> &str;

    /// The longest side, in pixels, the model's image processor keeps of an input image: a page
    /// rendered larger is only scaled down again. The pipeline renders pages at this size
    /// unless `render.longest_edge` says otherwise.
    fn image_longest_edge(&self) -> u32;

    /// Builds the prompt and preprocesses the images of one request.
    fn prepare(&self, request: &ChatRequest) -> Result<Self::Prepared, ModelError>;

    /// Prompt length in tokens and number of vision patches, for budget-based batching.
    fn cost(&self, prepared: &Self::Prepared) -> RequestCost;

    /// Greedy generation for a batch; one result per request, in order. Requests whose images
    /// are the same `Arc` share one vision encoding.
    fn generate(&self, batch: &[&Self::Prepared]) -> Result<Vec<Generation>, ModelError>;
}

/// The size of a prepared request, in the units batching budgets are expressed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost {
    /// Prompt length in tokens, image tokens included.
    pub prompt_tokens: usize,
    /// The request's generation limit; budgets count it because the KV cache grows to prompt +
    /// this.
    pub max_new_tokens: usize,
    /// Vision-encoder patches over all crops of the request's images; requests sharing a page image
    /// count them once per batch.
    pub image_patches: usize,
}
