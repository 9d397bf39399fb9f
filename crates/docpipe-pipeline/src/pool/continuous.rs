//! A replica's continuous batch ([`super::Batching::Continuous`]): the model's [`GenerationSession`]
//! and the jobs admitted to it, topped up from the queue between decode steps and answered as
//! they finish; on any error of the session, its unanswered jobs go to the static path (see the
//! pool's module documentation).

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::time::Instant;

use docpipe_core::{
    FinishedRequest, GenerationSession, ModelError, RequestKey, VisionLanguageModel,
};

use super::{run_batch, send, Calls, Completed, DeviceFailed, Job, ReplicaStats};
use crate::queue::{BatchBudget, WorkQueue};

/// A replica's continuous batch: the model's session and the jobs admitted to it and not yet
/// answered, by key in admission order.
pub(super) struct RunningBatch<'m, 'q, P, T> {
    session: Box<dyn GenerationSession<P> + 'm>,
    live: BTreeMap<RequestKey, LiveJob<P, T>>,
    next_key: u64,
    queue: &'q WorkQueue<Job<P, T>>,
    budget: BatchBudget,
}

struct LiveJob<P, T> {
    job: Job<P, T>,
    admitted: Instant,
}

impl<'m, 'q, P, T> RunningBatch<'m, 'q, P, T> {
    pub(super) fn new(
        session: Box<dyn GenerationSession<P> + 'm>,
        queue: &'q WorkQueue<Job<P, T>>,
        budget: BatchBudget,
    ) -> Self {
        RunningBatch {
            session,
            live: BTreeMap::new(),
            next_key: 0,
            queue,
            budget,
        }
    }

    /// Runs `first` and whatever joins it until no row is left. On an error of the session,
    /// its unanswered jobs go to [`run_batch`], whose outcome this returns.
    pub(super) fn run<M, E>(
        mut self,
        calls: &mut Calls<'_, M>,
        first: Vec<Job<P, T>>,
        results: &Sender<E>,
        stats: &mut ReplicaStats,
    ) -> Result<(), DeviceFailed<Job<P, T>>>
    where
        M: VisionLanguageModel<Prepared = P>,
        E: From<Completed<T>>,
    {
        let mut joining = first;
        loop {
            if !joining.is_empty() {
                if let Err(error) = self.admit(calls, joining, stats) {
                    return self.fall_back(calls, error, results, stats);
                }
            }
            if self.live.is_empty() {
                return Ok(());
            }
            if let Err(error) = self.step(calls, results, stats) {
                return self.fall_back(calls, error, results, stats);
            }
            joining = self.queue.take_more(self.budget_left());
        }
    }

    /// The budget the live rows leave: tokens are what their keys and values grow to, patches
    /// are only spent by the group being admitted.
    fn budget_left(&self) -> BatchBudget {
        let live: usize = self
            .live
            .values()
            .map(|l| l.job.cost.prompt_tokens + l.job.cost.max_new_tokens)
            .sum();
        BatchBudget {
            tokens: self.budget.tokens.saturating_sub(live),
            patches: self.budget.patches,
        }
    }

    /// Admits `jobs`; on an error they are live (unanswered) all the same, for the fallback.
    fn admit<M>(
        &mut self,
        calls: &mut Calls<'_, M>,
        jobs: Vec<Job<P, T>>,
        stats: &mut ReplicaStats,
    ) -> Result<(), ModelError>
    where
        M: VisionLanguageModel<Prepared = P>,
    {
        let keyed: Vec<(RequestKey, Job<P, T>)> = jobs
            .into_iter()
            .map(|job| {
                self.next_key += 1;
                (RequestKey(self.next_key), job)
            })
            .collect();
        let started = Instant::now();
        let admitted = calls.admit(&mut *self.session, &keyed);
        stats.busy += started.elapsed();
        if admitted.is_ok() {
            stats.batches += 1;
        }
        for (key, job) in keyed {
            let live = LiveJob {
                job,
                admitted: started,
            };
            self.live.insert(key, live);
        }
        admitted
    }

    /// One decode step; answers the jobs it finished. A step that names a request the batch
    /// does not hold, or one twice, answers none and fails.
    fn step<M, E>(
        &mut self,
        calls: &mut Calls<'_, M>,
        results: &Sender<E>,
        stats: &mut ReplicaStats,
    ) -> Result<(), ModelError>
    where
        M: VisionLanguageModel<Prepared = P>,
        E: From<Completed<T>>,
    {
        let rows = self.session.live();
        let started = Instant::now();
        let stepped = calls.step(&mut *self.session);
        stats.busy += started.elapsed();
        let finished = stepped?;
        stats.decode_steps += 1;
        let mut keys: Vec<RequestKey> = finished.iter().map(|f| f.key).collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() != finished.len() || keys.iter().any(|k| !self.live.contains_key(k)) {
            return Err(ModelError::Device(
                "the generation session finished a request it was not running, or one twice".into(),
            ));
        }
        for FinishedRequest { key, generation } in finished {
            let LiveJob { job, admitted } = self.live.remove(&key).expect("keys checked above");
            stats.requests += 1;
            stats.generated_tokens += generation.token_ids.len();
            send(results, job.tag, Ok(generation), admitted.elapsed(), rows);
        }
        Ok(())
    }

    /// Drops the session and reruns its unanswered jobs as a static batch.
    fn fall_back<M, E>(
        self,
        calls: &mut Calls<'_, M>,
        error: ModelError,
        results: &Sender<E>,
        stats: &mut ReplicaStats,
    ) -> Result<(), DeviceFailed<Job<P, T>>>
    where
        M: VisionLanguageModel<Prepared = P>,
        E: From<Completed<T>>,
    {
        tracing::warn!(
            unanswered = self.live.len(),
            "continuous batch failed, its requests rerun as static batches: {error}"
        );
        let unanswered = self.live.into_values().map(|l| l.job).collect();
        run_batch(calls, unanswered, results, stats)
    }
}
