//! The one interface between the pipeline and a model family: [`VisionLanguageModel`], with
//! the [`RequestCost`] units batching is budgeted in and the [`ModelError`] kinds the
//! inference pool reacts to, and the [`GenerationSession`] a family may offer for continuous
//! batching. See docs/architecture.md, "The model trait".

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

    /// A running batch that admits requests between decode steps (continuous batching), for
    /// the families that can give a request the tokens `generate` gives it whenever it joins.
    /// `None`, the default, keeps the pool on static batches of `generate`.
    fn start_session(&self) -> Option<Box<dyn GenerationSession<Self::Prepared> + '_>> {
        None
    }
}

/// Names a request inside a [`GenerationSession`]; the caller picks it, unique among the
/// session's unfinished requests, and gets it back with the request's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey(pub u64);

/// A request a session has finished.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRequest {
    /// The key it was admitted under.
    pub key: RequestKey,
    /// What `generate` would have returned for it.
    pub generation: Generation,
}

/// A decoding batch that requests join and leave one at a time: a slot freed by a short answer
/// is refilled while long generations go on, instead of waiting for the whole batch.
///
/// Each request's generation must be what [`VisionLanguageModel::generate`] returns for it, in
/// any batch and whenever it was admitted: the pool relies on that to rerun a failed session's
/// requests as static batches. After an error the session is in an unknown state and is
/// dropped; none of its requests count as answered.
pub trait GenerationSession<P> {
    /// Prefills `requests` and adds them to the running batch. Their first tokens come from
    /// the prefill, at the next [`GenerationSession::step`]. Requests whose images are the
    /// same `Arc` share one vision encoding, within an admission and (for the families that
    /// keep recent pages) across admissions.
    fn admit(&mut self, requests: &[(RequestKey, &P)]) -> Result<(), ModelError>;

    /// One token for every unfinished request; returns the requests that finished with it.
    fn step(&mut self) -> Result<Vec<FinishedRequest>, ModelError>;

    /// Requests admitted and not yet returned by a step.
    fn live(&self) -> usize;
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
