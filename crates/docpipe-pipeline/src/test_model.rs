//! A small deterministic model for unit tests: it answers each request with a hash of its
//! prompt and image sizes, and can be told to run out of memory above a batch size, to reject
//! prompts containing "invalid", or to fail its device after some batches.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use docpipe_core::{
    ChatRequest, ContentItem, FinishReason, Generation, ModelError, RequestCost,
    VisionLanguageModel,
};

#[derive(Default)]
pub struct EchoModel {
    pub oom_above: Option<usize>,
    pub device_fails_after_batches: Option<usize>,
    pub batches: AtomicUsize,
    pub batch_sizes: Mutex<Vec<usize>>,
}

#[derive(Debug, Clone)]
pub struct EchoPrepared {
    pub prompt: String,
    pub image_sizes: Vec<(u32, u32)>,
    pub max_new_tokens: usize,
}

/// What [`EchoModel`] answers for a prompt and its images.
pub fn echo_answer(prompt: &str, image_sizes: &[(u32, u32)]) -> String {
    let mut hasher = DefaultHasher::new();
    prompt.hash(&mut hasher);
    image_sizes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

pub fn prompt_of(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|c| match c {
            ContentItem::Text { text } => Some(text.as_str()),
            ContentItem::Image { .. } => None,
        })
        .collect()
}

impl VisionLanguageModel for EchoModel {
    type Prepared = EchoPrepared;

    fn model_id(&self) -> &str {
        "echo-0000"
    }

    fn prepare(&self, request: &ChatRequest) -> Result<EchoPrepared, ModelError> {
        Ok(EchoPrepared {
            prompt: prompt_of(request),
            image_sizes: request.images.iter().map(|i| i.dimensions()).collect(),
            max_new_tokens: request.max_new_tokens,
        })
    }

    fn cost(&self, prepared: &EchoPrepared) -> RequestCost {
        RequestCost {
            prompt_tokens: prepared.prompt.len(),
            max_new_tokens: prepared.max_new_tokens,
            image_patches: prepared.image_sizes.len() * 100,
        }
    }

    fn generate(&self, batch: &[&EchoPrepared]) -> Result<Vec<Generation>, ModelError> {
        if self.oom_above.is_some_and(|n| batch.len() > n) {
            return Err(ModelError::OutOfMemory(format!("{} requests", batch.len())));
        }
        if batch.iter().any(|p| p.prompt.contains("invalid")) {
            return Err(ModelError::InvalidRequest("the prompt says invalid".into()));
        }
        let done = self.batches.fetch_add(1, Ordering::SeqCst);
        if self.device_fails_after_batches.is_some_and(|n| done >= n) {
            return Err(ModelError::Device("the test device fell over".into()));
        }
        self.batch_sizes.lock().unwrap().push(batch.len());
        Ok(batch
            .iter()
            .map(|p| {
                let text = echo_answer(&p.prompt, &p.image_sizes);
                Generation {
                    token_ids: vec![1; text.len().min(p.max_new_tokens)],
                    finish_reason: if text.len() > p.max_new_tokens {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    },
                    text,
                    prompt_tokens: p.prompt.len(),
                }
            })
            .collect())
    }
}
