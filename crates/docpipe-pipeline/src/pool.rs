//! The inference pool: one model replica per device, each with its own batching loop on its own
//! thread, all pulling from one bounded [`WorkQueue`].
//!
//! A failed batch is never lost. Out of memory, an invalid request or a device error: the batch
//! is split in halves and retried, until the culprit is alone. Alone, out of memory and invalid
//! requests become that request's error row. A device error alone is judged by a probe (a
//! one-token text request): when the device still answers it, the request broke the model and
//! becomes an error row (as it does when it already failed alone on a replica that then
//! retired: it has now failed on two). When the probe fails too, the device is at fault: the
//! replica retires and its unfinished work goes back to the front of the queue for the others;
//! only when no replica is left does the pool fail. So one bad request costs its own rows, never
//! the replicas. The model guarantees batch invariance, so answers do not depend on which
//! replica or batch served a request.
//!
//! With continuous batching ([`Batching::Continuous`], for the families whose model offers a
//! [`GenerationSession`]), a replica keeps one batch running instead: between decode steps it
//! admits what the queue holds within the token budget its live rows leave, and answers each
//! request as it finishes, so a slot freed by a short answer does not wait for the longest
//! generation of its batch. Any error of the session ends it, and every request it had not
//! answered (newcomers included) is rerun as a static batch by the path above: batch
//! invariance makes the rerun give the tokens the session would have, and a request already
//! answered is not in it.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use docpipe_core::{
    ChatMessage, ChatRequest, ContentItem, DeviceGroup, FinishedRequest, Generation,
    GenerationSession, ModelError, RequestCost, RequestKey, VisionLanguageModel,
};

use crate::queue::{BatchBudget, Batchable, QueueClosed, WorkQueue};
use continuous::RunningBatch;

mod continuous;
#[cfg(feature = "fault-injection")]
mod fault;
#[cfg(feature = "fault-injection")]
pub use fault::FAULT_ENV;

/// One prepared request waiting for a replica, with the caller's tag to match the answer.
pub struct Job<P, T> {
    /// The caller's identifier, returned unchanged in [`Completed::tag`].
    pub tag: T,
    /// The model's inputs, from [`VisionLanguageModel::prepare`].
    pub prepared: P,
    /// What the request counts against the batch budget.
    pub cost: RequestCost,
    /// Requests about the same page share this value (see [`Batchable::image_group`]).
    pub image_group: u64,
    /// It failed alone on a replica whose probe then failed too: if it fails alone again, it
    /// is the request's failure, whatever the probe says.
    failed_alone: bool,
    #[cfg(feature = "fault-injection")]
    poisoned: bool,
}

impl<P, T> Job<P, T> {
    /// Costs `prepared` with the model that will run it, so the batcher's budget is the one the
    /// replica allocates for.
    pub fn new<M>(model: &M, tag: T, prepared: P, image_group: u64) -> Self
    where
        M: VisionLanguageModel<Prepared = P> + ?Sized,
    {
        Job {
            tag,
            cost: model.cost(&prepared),
            prepared,
            image_group,
            failed_alone: false,
            #[cfg(feature = "fault-injection")]
            poisoned: fault::poisons_next_request(),
        }
    }
}

impl<P, T> Batchable for Job<P, T> {
    fn cost(&self) -> RequestCost {
        self.cost
    }
    fn image_group(&self) -> u64 {
        self.image_group
    }
}

/// Why one job got no generation. It becomes that job's error row; the replica carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The model refused the request, or it did not fit even alone.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The request failed the device alone while the device went on answering others (or it
    /// failed alone on two replicas): the request, not the replica, is at fault.
    #[error("this request fails the model on its own (the replica answers others): {0}")]
    FailedAlone(ModelError),
    /// The model broke its contract of one generation per request.
    #[error("the model returned {returned} generations for {requested} requests")]
    AnswerCount {
        /// Generations the model returned.
        returned: usize,
        /// Requests in the batch.
        requested: usize,
    },
}

/// The answer to one job: a generation or the error that prevented it.
#[derive(Debug)]
pub struct Completed<T> {
    /// The job's [`Job::tag`].
    pub tag: T,
    /// The generation, or why the job got none.
    pub result: Result<Generation, InferError>,
    /// Wall time of the `generate` call that produced it (the whole batch); under continuous
    /// batching, from the request's admission to the step that finished it.
    pub latency: Duration,
    /// Requests in that batch; under continuous batching, the rows of the step that finished
    /// it.
    pub batch_size: usize,
}

/// How a replica batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Static batches: each batch runs to its longest generation and is answered together.
    Static,
    /// Continuous batching where the model offers a [`GenerationSession`] (the Idefics2 and
    /// Idefics3 families); static batches for the others.
    Continuous,
}

/// A replica and the devices it runs on (for messages). A replica spanning several devices is
/// one replica here: batched, budgeted, split on OOM and retired as a whole.
pub struct Replica<M> {
    /// Where the replica runs.
    pub device: DeviceGroup,
    /// The loaded model, shared with the render threads that prepare requests.
    pub model: Arc<M>,
}

/// The device failure that retired a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{device}: {error}")]
pub struct ReplicaFailure {
    /// The replica's devices.
    pub device: DeviceGroup,
    /// The [`ModelError::Device`] that retired it.
    pub error: ModelError,
}

/// Why the pool could not finish.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every replica retired after a device failure; requests still queued were not run.
    #[error(
        "every inference replica failed ({}); {abandoned} requests were not run",
        list(failures)
    )]
    NoReplicaLeft {
        /// Why each replica retired, one entry per replica.
        failures: Vec<ReplicaFailure>,
        /// Requests left in the queue that no replica will run.
        abandoned: usize,
    },
}

fn list(failures: &[ReplicaFailure]) -> String {
    let items: Vec<String> = failures.iter().map(ToString::to_string).collect();
    items.join("; ")
}

/// What each replica did, for the run report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStats {
    /// The replica's devices.
    pub device: DeviceGroup,
    /// Batches that returned one generation per request; under continuous batching, the groups
    /// of requests admitted to a running batch.
    pub batches: usize,
    /// Requests answered by those batches.
    pub requests: usize,
    /// Tokens generated over those requests, end-of-sequence tokens included.
    pub generated_tokens: usize,
    /// Decode steps, each one token for every unfinished row of a batch: a static batch takes
    /// as many as its longest generation, a continuous batch one per step it runs.
    pub decode_steps: usize,
    /// Wall time spent in `generate`, failed calls included.
    pub busy: Duration,
    /// The device error that retired this replica, if any.
    pub failure: Option<ModelError>,
}

impl ReplicaStats {
    /// A replica that has done nothing yet.
    fn idle(device: DeviceGroup) -> Self {
        ReplicaStats {
            device,
            batches: 0,
            requests: 0,
            generated_tokens: 0,
            decode_steps: 0,
            busy: Duration::ZERO,
            failure: None,
        }
    }
}

/// The model replicas and the queue they take batches from. Started with [`InferencePool::start`],
/// fed through [`Submitter`]s, stopped with [`InferencePool::finish`].
pub struct InferencePool<M: VisionLanguageModel, T> {
    queue: Arc<WorkQueue<Job<M::Prepared, T>>>,
    threads: Vec<(DeviceGroup, JoinHandle<ReplicaStats>)>,
}

impl<M, T> InferencePool<M, T>
where
    M: VisionLanguageModel + 'static,
    T: Send + 'static,
{
    /// Starts one thread per replica. Answers go to `results`, in completion order, as any
    /// event type a [`Completed`] converts into (so the caller can merge them with its own).
    pub fn start<E: From<Completed<T>> + Send + 'static>(
        replicas: Vec<Replica<M>>,
        budget: BatchBudget,
        batching: Batching,
        queue_capacity: usize,
        results: Sender<E>,
    ) -> Self {
        let queue = Arc::new(WorkQueue::new(queue_capacity, replicas.len()));
        let threads = replicas
            .into_iter()
            .enumerate()
            .map(|(i, replica)| {
                let queue = queue.clone();
                let results = results.clone();
                let device = replica.device.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("infer-{i}-{device}"))
                    .spawn(move || replica_loop(replica, &queue, budget, batching, &results))
                    .expect("spawning an inference thread");
                (device, thread)
            })
            .collect();
        Self { queue, threads }
    }

    /// A handle for the producers.
    pub fn submitter(&self) -> Submitter<M::Prepared, T> {
        Submitter {
            queue: self.queue.clone(),
        }
    }

    /// Closes the queue, waits for the replicas to drain it, and reports what each did.
    pub fn finish(self) -> Result<Vec<ReplicaStats>, PoolError> {
        self.queue.close();
        let stats: Vec<ReplicaStats> = self
            .threads
            .into_iter()
            .map(|(device, thread)| {
                thread.join().unwrap_or_else(|_| ReplicaStats {
                    failure: Some(ModelError::Device("inference thread panicked".into())),
                    ..ReplicaStats::idle(device)
                })
            })
            .collect();
        if stats.iter().all(|s| s.failure.is_some()) {
            return Err(PoolError::NoReplicaLeft {
                failures: stats
                    .iter()
                    .filter_map(|s| {
                        Some(ReplicaFailure {
                            device: s.device.clone(),
                            error: s.failure.clone()?,
                        })
                    })
                    .collect(),
                abandoned: self.queue.abandoned(),
            });
        }
        Ok(stats)
    }
}

/// Pushes prepared requests into the pool; blocks while the queue is full.
pub struct Submitter<P, T> {
    queue: Arc<WorkQueue<Job<P, T>>>,
}

impl<P, T> Clone for Submitter<P, T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<P, T> Submitter<P, T> {
    /// Queues a job, blocking while the queue is full; [`QueueClosed`] when no replica is left or
    /// the pool is finishing.
    pub fn submit(&self, job: Job<P, T>) -> Result<(), QueueClosed> {
        self.queue.push(job)
    }
}

fn replica_loop<M: VisionLanguageModel, T, E: From<Completed<T>>>(
    replica: Replica<M>,
    queue: &WorkQueue<Job<M::Prepared, T>>,
    budget: BatchBudget,
    batching: Batching,
    results: &Sender<E>,
) -> ReplicaStats {
    let mut stats = ReplicaStats::idle(replica.device.clone());
    let mut calls = Calls::new(&*replica.model);
    while let Some(batch) = queue.take_batch(budget) {
        let session = match batching {
            Batching::Continuous => replica.model.start_session(),
            Batching::Static => None,
        };
        let outcome = match session {
            Some(session) => {
                let running = RunningBatch::new(session, queue, budget);
                running.run(&mut calls, batch, results, &mut stats)
            }
            None => run_batch(&mut calls, batch, results, &mut stats),
        };
        if let Err(DeviceFailed { error, unfinished }) = outcome {
            tracing::error!(
                device = %replica.device,
                requeued = unfinished.len(),
                "inference replica retired: {error}"
            );
            stats.failure = Some(error);
            let left = queue.retire_replica(unfinished);
            if left == 0 {
                tracing::error!("no inference replica is left");
            }
            break;
        }
        queue.batch_done();
    }
    stats
}

/// A replica's model as its batching loop calls it: batches, and the probe that tells a broken
/// device from a request that breaks the model. With the `fault-injection` feature, also the
/// faults the end-to-end tests inject.
struct Calls<'m, M: VisionLanguageModel> {
    model: &'m M,
    /// Prepared on first use.
    probe: Option<M::Prepared>,
    #[cfg(feature = "fault-injection")]
    faults: fault::ReplicaFaults,
}

impl<'m, M: VisionLanguageModel> Calls<'m, M> {
    fn new(model: &'m M) -> Self {
        Self {
            model,
            probe: None,
            #[cfg(feature = "fault-injection")]
            faults: fault::ReplicaFaults::default(),
        }
    }

    fn generate<T>(&mut self, jobs: &[Job<M::Prepared, T>]) -> Result<Vec<Generation>, ModelError> {
        #[cfg(feature = "fault-injection")]
        self.faults
            .before_batch(jobs.iter().any(|job| job.poisoned))?;
        let refs: Vec<&M::Prepared> = jobs.iter().map(|j| &j.prepared).collect();
        self.model.generate(&refs)
    }

    fn admit<T>(
        &mut self,
        session: &mut dyn GenerationSession<M::Prepared>,
        joining: &[(RequestKey, Job<M::Prepared, T>)],
    ) -> Result<(), ModelError> {
        #[cfg(feature = "fault-injection")]
        self.faults
            .before_batch(joining.iter().any(|(_, job)| job.poisoned))?;
        let requests: Vec<(RequestKey, &M::Prepared)> = joining
            .iter()
            .map(|(key, job)| (*key, &job.prepared))
            .collect();
        session.admit(&requests)
    }

    fn step(
        &mut self,
        session: &mut dyn GenerationSession<M::Prepared>,
    ) -> Result<Vec<FinishedRequest>, ModelError> {
        #[cfg(feature = "fault-injection")]
        self.faults.before_call()?;
        session.step()
    }

    /// True when the device answers a one-token text request.
    fn device_answers(&mut self) -> bool {
        #[cfg(feature = "fault-injection")]
        if self.faults.before_call().is_err() {
            return false;
        }
        let probe = match &self.probe {
            Some(probe) => probe,
            None => match self.model.prepare(&probe_request()) {
                Ok(probe) => self.probe.insert(probe),
                Err(e) => {
                    // The device cannot be told apart from the request: blame the request,
                    // which costs one row rather than a replica.
                    tracing::warn!("the health probe cannot be prepared: {e}");
                    return true;
                }
            },
        };
        self.model.generate(&[probe]).is_ok()
    }
}

/// The health probe: text only, one new token.
fn probe_request() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: vec![ContentItem::Text {
                text: "Hello".into(),
            }],
        }],
        images: Vec::new(),
        max_new_tokens: 1,
    }
}

/// A device failure in the middle of a batch: the replica must retire, and these jobs go back
/// to the queue for the others.
struct DeviceFailed<J> {
    error: ModelError,
    unfinished: Vec<J>,
}

/// Runs one batch to completion, splitting it on errors until the culprit is alone (see the
/// module documentation). On a device failure, returns the error and every job not yet
/// answered.
fn run_batch<M: VisionLanguageModel, T, E: From<Completed<T>>>(
    calls: &mut Calls<'_, M>,
    batch: Vec<Job<M::Prepared, T>>,
    results: &Sender<E>,
    stats: &mut ReplicaStats,
) -> Result<(), DeviceFailed<Job<M::Prepared, T>>> {
    // Last in, first out: the first half of a split batch is run first, keeping request order.
    let mut pending = vec![batch];
    while let Some(mut jobs) = pending.pop() {
        let started = Instant::now();
        let outcome = calls.generate(&jobs);
        let latency = started.elapsed();
        stats.busy += latency;
        match outcome {
            Ok(generations) if generations.len() == jobs.len() => {
                stats.batches += 1;
                stats.requests += jobs.len();
                stats.decode_steps += generations
                    .iter()
                    .map(|g| g.token_ids.len())
                    .max()
                    .unwrap_or(0);
                let batch_size = jobs.len();
                for (job, generation) in jobs.into_iter().zip(generations) {
                    stats.generated_tokens += generation.token_ids.len();
                    send(results, job.tag, Ok(generation), latency, batch_size);
                }
            }
            Ok(generations) => {
                let error = InferError::AnswerCount {
                    returned: generations.len(),
                    requested: jobs.len(),
                };
                fail_all(results, jobs, &error, latency);
            }
            Err(_) if jobs.len() > 1 => {
                let second = jobs.split_off(jobs.len() / 2);
                pending.push(second);
                pending.push(jobs);
            }
            Err(error @ (ModelError::OutOfMemory(_) | ModelError::InvalidRequest(_))) => {
                fail_all(results, jobs, &error.into(), latency);
            }
            Err(error @ ModelError::Device(_)) => {
                let probed = Instant::now();
                let request_at_fault = jobs[0].failed_alone || calls.device_answers();
                stats.busy += probed.elapsed();
                if request_at_fault {
                    fail_all(results, jobs, &InferError::FailedAlone(error), latency);
                } else {
                    jobs[0].failed_alone = true;
                    let unfinished = pending.into_iter().rev().flatten();
                    return Err(DeviceFailed {
                        error,
                        unfinished: jobs.into_iter().chain(unfinished).collect(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn fail_all<P, T, E: From<Completed<T>>>(
    results: &Sender<E>,
    jobs: Vec<Job<P, T>>,
    error: &InferError,
    latency: Duration,
) {
    let batch_size = jobs.len();
    for job in jobs {
        send(results, job.tag, Err(error.clone()), latency, batch_size);
    }
}

fn send<T, E: From<Completed<T>>>(
    results: &Sender<E>,
    tag: T,
    result: Result<Generation, InferError>,
    latency: Duration,
    batch_size: usize,
) {
    // A closed receiver means the run is being torn down; the answer has nowhere to go.
    let _ = results.send(E::from(Completed {
        tag,
        result,
        latency,
        batch_size,
    }));
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use docpipe_core::{ChatMessage, ChatRequest, ContentItem};

    use super::*;
    use crate::test_model::{echo_answer, EchoModel, SessionEvent};

    fn request(text: &str, max_new_tokens: usize) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: vec![ContentItem::Text { text: text.into() }],
            }],
            images: Vec::new(),
            max_new_tokens,
        }
    }

    const BOTH: [Batching; 2] = [Batching::Static, Batching::Continuous];

    type Answers = Vec<(usize, Result<Generation, InferError>)>;

    /// Runs `prompts` through a pool of `models` and returns every answer by job index.
    fn run_pool(
        models: Vec<Arc<EchoModel>>,
        prompts: &[String],
        budget: BatchBudget,
        batching: Batching,
    ) -> (Answers, Result<Vec<ReplicaStats>, PoolError>) {
        let (tx, rx) = std::sync::mpsc::channel::<Completed<usize>>();
        let replicas = models
            .iter()
            .map(|m| Replica {
                device: DeviceGroup::single(docpipe_core::DeviceSpec::Cpu),
                model: m.clone(),
            })
            .collect();
        let pool = InferencePool::start(replicas, budget, batching, 4, tx);
        let submitter = pool.submitter();
        let preparer = models[0].clone();
        let producer = {
            let prompts = prompts.to_vec();
            std::thread::spawn(move || {
                for (i, prompt) in prompts.iter().enumerate() {
                    let prepared = preparer.prepare(&request(prompt, 32)).unwrap();
                    let job = Job::new(&*preparer, i, prepared, i as u64);
                    if submitter.submit(job).is_err() {
                        break;
                    }
                }
            })
        };
        producer.join().unwrap();
        let stats = pool.finish();
        (rx.iter().map(|c| (c.tag, c.result)).collect(), stats)
    }

    fn prompts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("question {i}")).collect()
    }

    const WIDE: BatchBudget = BatchBudget {
        tokens: 8 * 50,
        patches: 1000,
    };

    /// Asserts that every prompt got exactly one answer, the model's.
    fn assert_each_answered_once(answers: Answers, prompts: &[String]) {
        let mut by_tag: HashMap<usize, String> = HashMap::new();
        for (tag, result) in answers {
            let previous = by_tag.insert(tag, result.unwrap().text);
            assert!(previous.is_none(), "job {tag} answered twice");
        }
        assert_eq!(by_tag.len(), prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            assert_eq!(by_tag[&i], echo_answer(prompt, &[]));
        }
    }

    /// Asserts one answer per prompt: the model's, except for job `failed`, whose error is of
    /// the kind `expected` accepts.
    fn assert_only_failure(
        answers: Answers,
        prompts: &[String],
        failed: usize,
        expected: impl Fn(&InferError) -> bool,
    ) {
        assert_eq!(answers.len(), prompts.len());
        for (tag, result) in answers {
            match result {
                Ok(g) => assert_eq!(g.text, echo_answer(&prompts[tag], &[])),
                Err(error) => {
                    assert_eq!(tag, failed);
                    assert!(expected(&error), "{error}");
                }
            }
        }
    }

    #[test]
    fn a_replica_failing_mid_run_loses_and_duplicates_nothing() {
        for batching in BOTH {
            let flaky = Arc::new(EchoModel::failing_after(3));
            let healthy = Arc::new(EchoModel::waiting_for_failure_of(&flaky));
            let prompts = prompts(200);
            let (answers, stats) = run_pool(vec![flaky, healthy], &prompts, WIDE, batching);
            let stats = stats.unwrap();
            assert_each_answered_once(answers, &prompts);
            assert_eq!(
                stats[0].failure,
                Some(ModelError::Device("the test device fell over".into())),
                "{batching:?}"
            );
            assert!(stats[1].failure.is_none());
            assert_eq!(
                stats.iter().map(|s| s.requests).sum::<usize>(),
                prompts.len()
            );
        }
    }

    #[test]
    fn out_of_memory_batches_are_split_until_they_fit() {
        let model = Arc::new(EchoModel {
            oom_above: Some(3),
            ..EchoModel::default()
        });
        let prompts = prompts(40);
        let (answers, stats) = run_pool(vec![model.clone()], &prompts, WIDE, Batching::Static);
        stats.unwrap();
        assert_eq!(answers.len(), prompts.len());
        assert!(answers.iter().all(|(_, r)| r.is_ok()));
        let sizes = model.batch_sizes.lock().unwrap();
        assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), prompts.len());
    }

    #[test]
    fn an_invalid_request_fails_alone() {
        for batching in BOTH {
            let model = Arc::new(EchoModel::default());
            let mut prompts = prompts(30);
            prompts[17] = "an invalid one".into();
            let (answers, stats) = run_pool(vec![model], &prompts, WIDE, batching);
            stats.unwrap();
            assert_only_failure(answers, &prompts, 17, |e| {
                matches!(e, InferError::Model(ModelError::InvalidRequest(_)))
            });
        }
    }

    #[test]
    fn a_request_that_breaks_the_model_fails_alone_and_every_replica_stays() {
        for batching in BOTH {
            let models: Vec<Arc<EchoModel>> =
                (0..3).map(|_| Arc::new(EchoModel::default())).collect();
            let mut prompts = prompts(60);
            prompts[23] = "a poison pill".into();
            let (answers, stats) = run_pool(models, &prompts, WIDE, batching);
            let stats = stats.unwrap();
            assert!(stats.iter().all(|s| s.failure.is_none()), "{stats:?}");
            assert_only_failure(answers, &prompts, 23, |e| {
                matches!(e, InferError::FailedAlone(ModelError::Device(_)))
            });
            assert_eq!(
                stats.iter().map(|s| s.requests).sum::<usize>(),
                prompts.len() - 1
            );
        }
    }

    #[test]
    fn the_pool_fails_when_no_replica_is_left() {
        for batching in BOTH {
            let models = (0..2)
                .map(|_| Arc::new(EchoModel::failing_after(1)))
                .collect();
            let (answers, stats) = run_pool(models, &prompts(100), WIDE, batching);
            match stats {
                Err(PoolError::NoReplicaLeft { failures, .. }) => assert_eq!(failures.len(), 2),
                Ok(_) => panic!("the pool finished without replicas"),
            }
            assert!(answers.len() < 100);
            // A request that failed alone on the first replica to die and then alone on the
            // second is blamed, as a request that kills devices would be: at most that one.
            let blamed = answers.iter().filter(|(_, r)| r.is_err()).count();
            assert!(blamed <= 1, "{blamed} requests blamed");
            assert!(answers
                .iter()
                .all(|(_, r)| matches!(r, Ok(_) | Err(InferError::FailedAlone(_)))));
        }
    }

    /// Runs `jobs` (prompt, max new tokens) on one replica of `model`, from a queue filled and
    /// closed beforehand so that what joins when does not depend on thread timing.
    fn run_queued(
        model: &Arc<EchoModel>,
        jobs: &[(String, usize)],
        budget: BatchBudget,
        batching: Batching,
    ) -> (Answers, ReplicaStats) {
        let queue = WorkQueue::new(jobs.len(), 1);
        for (i, (prompt, max_new_tokens)) in jobs.iter().enumerate() {
            let prepared = model.prepare(&request(prompt, *max_new_tokens)).unwrap();
            queue
                .push(Job::new(&**model, i, prepared, i as u64))
                .unwrap();
        }
        queue.close();
        let (tx, rx) = std::sync::mpsc::channel::<Completed<usize>>();
        let replica = Replica {
            device: DeviceGroup::single(docpipe_core::DeviceSpec::Cpu),
            model: model.clone(),
        };
        let stats = replica_loop(replica, &queue, budget, batching, &tx);
        drop(tx);
        (rx.iter().map(|c| (c.tag, c.result)).collect(), stats)
    }

    fn admitted(step: usize, prompts: &[&str], live_tokens: usize) -> SessionEvent {
        SessionEvent::Admitted {
            step,
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            live_tokens,
        }
    }

    fn finished(step: usize, prompt: &str) -> SessionEvent {
        SessionEvent::Finished {
            step,
            prompt: prompt.into(),
        }
    }

    #[test]
    fn a_slot_freed_by_a_short_answer_is_refilled_while_a_long_one_runs() {
        // Every prompt costs 4 tokens plus its limit: the long one and one short one fill the
        // budget (20 + 6), so each short one waits for the previous to finish.
        let jobs: Vec<(String, usize)> = [("long", 16), ("sh-a", 2), ("sh-b", 2), ("sh-c", 2)]
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect();
        let budget = BatchBudget {
            tokens: 26,
            patches: 1000,
        };
        let prompts: Vec<String> = jobs.iter().map(|(p, _)| p.clone()).collect();
        let continuous = Arc::new(EchoModel::default());
        let (answers, stats) = run_queued(&continuous, &jobs, budget, Batching::Continuous);
        assert_each_answered_once(answers, &prompts);
        assert_eq!(
            *continuous.session_log.lock().unwrap(),
            vec![
                admitted(0, &["long", "sh-a"], 26),
                finished(2, "sh-a"),
                admitted(2, &["sh-b"], 26),
                finished(4, "sh-b"),
                admitted(4, &["sh-c"], 26),
                finished(6, "sh-c"),
                finished(16, "long"),
            ]
        );
        assert_eq!(
            (stats.decode_steps, stats.batches, stats.requests),
            (16, 3, 4)
        );
        // Static batches wait for the long answer before the next two start.
        let fixed = Arc::new(EchoModel::default());
        let (answers, stats) = run_queued(&fixed, &jobs, budget, Batching::Static);
        assert_each_answered_once(answers, &prompts);
        assert!(fixed.session_log.lock().unwrap().is_empty());
        assert_eq!((stats.decode_steps, stats.batches), (16 + 2, 2));
    }

    /// Prompts of several lengths and limits, as OCR and short questions mixed.
    fn mixed_jobs(n: usize) -> Vec<(String, usize)> {
        (0..n)
            .map(|i| ("q".repeat(1 + i % 7) + &i.to_string(), 1 + (i * 5) % 17))
            .collect()
    }

    #[test]
    fn live_rows_never_exceed_the_token_budget() {
        let jobs = mixed_jobs(60);
        let budget = BatchBudget {
            tokens: 60,
            patches: 1000,
        };
        let model = Arc::new(EchoModel::default());
        let (answers, stats) = run_queued(&model, &jobs, budget, Batching::Continuous);
        let prompts: Vec<String> = jobs.iter().map(|(p, _)| p.clone()).collect();
        assert_each_answered_once(answers, &prompts);
        let log = model.session_log.lock().unwrap();
        let mut joined_running = 0;
        for event in log.iter() {
            if let SessionEvent::Admitted {
                step, live_tokens, ..
            } = event
            {
                assert!(*live_tokens <= budget.tokens, "{event:?}");
                joined_running += usize::from(*step > 0);
            }
        }
        assert!(joined_running > 10, "{log:?}");
        assert_eq!(stats.requests, jobs.len());
    }

    #[test]
    fn a_failing_session_reruns_only_its_unanswered_requests() {
        for error in [
            ModelError::OutOfMemory("the test step ran out".into()),
            ModelError::Device("a transient test fault".into()),
        ] {
            let jobs = mixed_jobs(40);
            let model = Arc::new(EchoModel {
                step_fails_at: Some((7, error.clone())),
                ..EchoModel::default()
            });
            let budget = BatchBudget {
                tokens: 80,
                patches: 1000,
            };
            let (answers, stats) = run_queued(&model, &jobs, budget, Batching::Continuous);
            let prompts: Vec<String> = jobs.iter().map(|(p, _)| p.clone()).collect();
            assert_each_answered_once(answers, &prompts);
            assert!(stats.failure.is_none(), "{error}: {:?}", stats.failure);
            assert_eq!(stats.requests, jobs.len());
            // Some requests finished in the session before its step failed; the rerun answered
            // the others, not those.
            let log = model.session_log.lock().unwrap();
            let failed = log
                .iter()
                .position(|e| matches!(e, SessionEvent::Failed { .. }))
                .expect("the step failed");
            let before_failure = log[..failed]
                .iter()
                .filter(|e| matches!(e, SessionEvent::Finished { .. }))
                .count();
            assert!(before_failure > 0, "{log:?}");
            let in_sessions = log
                .iter()
                .filter(|e| matches!(e, SessionEvent::Finished { .. }))
                .count();
            assert!(in_sessions < jobs.len(), "{error}: no request was rerun");
        }
    }
}
