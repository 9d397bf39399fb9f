//! A small deterministic model for unit tests: it answers each request with a hash of its
//! prompt and image sizes, and can be told to run out of memory above a batch size, to reject
//! prompts containing "invalid", to fail the device on any batch with a prompt containing
//! "poison" (a request that breaks the model), or to fail its device after some batches.
//!
//! Tests of replica failure pair a failing model with one that holds its first batch until
//! the other has failed: otherwise a fast healthy replica can take every batch on a loaded
//! machine and the failure the test is about never happens.
//!
//! It also offers a [`GenerationSession`] (continuous batching): a request takes one step per
//! answer token, an admission counts as a batch for the faults above, and every admission and
//! finish is logged with its step for the pool's tests.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docpipe_core::{
    ChatRequest, ContentItem, FinishReason, FinishedRequest, Generation, GenerationSession,
    ModelError, RequestCost, RequestKey, VisionLanguageModel,
};

#[derive(Default)]
pub struct EchoModel {
    pub oom_above: Option<usize>,
    pub device_fails_after_batches: Option<usize>,
    /// Hold the first batch until this model's device has failed (at most 10 s).
    pub waits_for_failure_of: Option<Arc<EchoModel>>,
    /// Its sessions' steps fail with this error at the N-th step (counted over the model's
    /// sessions, from 1), once.
    pub step_fails_at: Option<(usize, ModelError)>,
    pub batches: AtomicUsize,
    pub batch_sizes: Mutex<Vec<usize>>,
    pub steps: AtomicUsize,
    pub session_log: Mutex<Vec<SessionEvent>>,
}

/// What a session of [`EchoModel`] did, at which of its steps (0 before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// These prompts joined; the live rows then held `live_tokens` (prompt plus max new tokens).
    Admitted {
        step: usize,
        prompts: Vec<String>,
        live_tokens: usize,
    },
    /// This prompt's request finished.
    Finished { step: usize, prompt: String },
    /// The step failed with `step_fails_at`'s error.
    Failed { step: usize },
}

impl EchoModel {
    pub fn failing_after(batches: usize) -> Self {
        EchoModel {
            device_fails_after_batches: Some(batches),
            ..EchoModel::default()
        }
    }

    pub fn waiting_for_failure_of(other: &Arc<EchoModel>) -> Self {
        EchoModel {
            waits_for_failure_of: Some(other.clone()),
            ..EchoModel::default()
        }
    }

    fn has_failed(&self) -> bool {
        self.device_fails_after_batches
            .is_some_and(|n| self.batches.load(Ordering::SeqCst) > n)
    }
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

    fn image_longest_edge(&self) -> u32 {
        980
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
        self.run_batch(batch)?;
        Ok(batch.iter().map(|p| answer(p)).collect())
    }

    fn start_session(&self) -> Option<Box<dyn GenerationSession<EchoPrepared> + '_>> {
        Some(Box::new(EchoSession {
            model: self,
            rows: Vec::new(),
            step: 0,
        }))
    }
}

impl EchoModel {
    /// The checks and faults of one batch (or of the rows of a session after an admission).
    fn run_batch(&self, batch: &[&EchoPrepared]) -> Result<(), ModelError> {
        if self.oom_above.is_some_and(|n| batch.len() > n) {
            return Err(ModelError::OutOfMemory(format!("{} requests", batch.len())));
        }
        if batch.iter().any(|p| p.prompt.contains("invalid")) {
            return Err(ModelError::InvalidRequest("the prompt says invalid".into()));
        }
        if batch.iter().any(|p| p.prompt.contains("poison")) {
            return Err(ModelError::Device(
                "a poisoned request broke the kernel".into(),
            ));
        }
        let done = self.batches.fetch_add(1, Ordering::SeqCst);
        if let Some(other) = self.waits_for_failure_of.as_ref().filter(|_| done == 0) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !other.has_failed() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if self.device_fails_after_batches.is_some_and(|n| done >= n) {
            return Err(ModelError::Device("the test device fell over".into()));
        }
        self.batch_sizes.lock().unwrap().push(batch.len());
        Ok(())
    }
}

/// What [`EchoModel`] generates for a request.
fn answer(p: &EchoPrepared) -> Generation {
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
}

struct EchoSession<'m> {
    model: &'m EchoModel,
    /// Unfinished requests and the steps each has had.
    rows: Vec<(RequestKey, EchoPrepared, usize)>,
    step: usize,
}

impl GenerationSession<EchoPrepared> for EchoSession<'_> {
    fn admit(&mut self, requests: &[(RequestKey, &EchoPrepared)]) -> Result<(), ModelError> {
        let rows: Vec<&EchoPrepared> = self
            .rows
            .iter()
            .map(|(_, p, _)| p)
            .chain(requests.iter().map(|(_, p)| *p))
            .collect();
        self.model.run_batch(&rows)?;
        self.rows
            .extend(requests.iter().map(|(k, p)| (*k, (*p).clone(), 0)));
        let live_tokens = self
            .rows
            .iter()
            .map(|(_, p, _)| p.prompt.len() + p.max_new_tokens)
            .sum();
        self.model
            .session_log
            .lock()
            .unwrap()
            .push(SessionEvent::Admitted {
                step: self.step,
                prompts: requests.iter().map(|(_, p)| p.prompt.clone()).collect(),
                live_tokens,
            });
        Ok(())
    }

    fn step(&mut self) -> Result<Vec<FinishedRequest>, ModelError> {
        let step = self.model.steps.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((_, error)) = self
            .model
            .step_fails_at
            .as_ref()
            .filter(|(at, _)| *at == step)
        {
            let failed = SessionEvent::Failed {
                step: self.step + 1,
            };
            self.model.session_log.lock().unwrap().push(failed);
            return Err(error.clone());
        }
        if self.model.has_failed() {
            return Err(ModelError::Device("the test device fell over".into()));
        }
        self.step += 1;
        let mut finished = Vec::new();
        for (key, prepared, steps) in &mut self.rows {
            *steps += 1;
            let generation = answer(prepared);
            if *steps == generation.token_ids.len().max(1) {
                self.model
                    .session_log
                    .lock()
                    .unwrap()
                    .push(SessionEvent::Finished {
                        step: self.step,
                        prompt: prepared.prompt.clone(),
                    });
                finished.push(FinishedRequest {
                    key: *key,
                    generation,
                });
            }
        }
        self.rows
            .retain(|(key, _, _)| finished.iter().all(|f| f.key != *key));
        Ok(finished)
    }

    fn live(&self) -> usize {
        self.rows.len()
    }
}
