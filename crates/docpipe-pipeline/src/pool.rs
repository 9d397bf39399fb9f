//! The inference pool: one model replica per device, each with its own batching loop on its own
//! thread, all pulling from one bounded [`WorkQueue`].
//!
//! A failed batch is never lost. Out of memory: the batch is split in halves and retried. An
//! invalid request: halves too, until the culprit is alone and becomes an error row. A device
//! failure: the replica retires and its unfinished work goes back to the front of the queue for
//! the others; only when no replica is left does the pool fail. The model guarantees batch
//! invariance, so answers do not depend on which replica or batch served a request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use docpipe_core::{Generation, ModelError, RequestCost, VisionLanguageModel};

use crate::queue::{BatchBudget, Batchable, QueueClosed, WorkQueue};

/// Test hook: with `DOCPIPE_INFER_FAULT=N`, the N-th batch the pool starts (counted over all
/// replicas, from 1) fails as a device failure would, retiring the replica that took it. This is
/// how the end-to-end tests lose a replica mid-run with a real model on CPU.
pub const FAULT_ENV: &str = "DOCPIPE_INFER_FAULT";

/// The batch [`FAULT_ENV`] names, and how many batches have started.
struct InjectedFault {
    at: Option<usize>,
    started: AtomicUsize,
}

impl InjectedFault {
    fn from_env() -> Self {
        InjectedFault {
            at: std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok()),
            started: AtomicUsize::new(0),
        }
    }

    /// Counts a batch starting; true when it is the one to fail.
    fn trips(&self) -> bool {
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        self.at == Some(n)
    }
}

/// One prepared request waiting for a replica, with the caller's tag to match the answer.
pub struct Job<P, T> {
    pub tag: T,
    pub prepared: P,
    pub cost: RequestCost,
    /// Requests about the same page share this value (see [`Batchable::image_group`]).
    pub image_group: u64,
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

/// The answer to one job: a generation or the message of the error that prevented it.
#[derive(Debug)]
pub struct Completed<T> {
    pub tag: T,
    pub result: Result<Generation, String>,
    /// Wall time of the `generate` call that produced it (the whole batch).
    pub latency: Duration,
    /// Requests in that batch.
    pub batch_size: usize,
}

/// A replica and the device it runs on (for messages).
pub struct Replica<M> {
    pub device: String,
    pub model: Arc<M>,
}

/// Why the pool could not finish.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("every inference replica failed ({}); {abandoned} requests were not run", failures.join("; "))]
    NoReplicaLeft {
        failures: Vec<String>,
        abandoned: usize,
    },
}

/// What each replica did, for the run report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaStats {
    pub device: String,
    pub batches: usize,
    pub requests: usize,
    pub generated_tokens: usize,
    pub busy: Duration,
    /// The device error that retired this replica, if any.
    pub failure: Option<String>,
}

pub struct InferencePool<M: VisionLanguageModel, T> {
    queue: Arc<WorkQueue<Job<M::Prepared, T>>>,
    threads: Vec<JoinHandle<ReplicaStats>>,
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
        queue_capacity: usize,
        results: Sender<E>,
    ) -> Self {
        let queue = Arc::new(WorkQueue::new(queue_capacity, replicas.len()));
        let fault = Arc::new(InjectedFault::from_env());
        let threads = replicas
            .into_iter()
            .enumerate()
            .map(|(i, replica)| {
                let queue = queue.clone();
                let results = results.clone();
                let fault = fault.clone();
                std::thread::Builder::new()
                    .name(format!("infer-{i}-{}", replica.device))
                    .spawn(move || replica_loop(replica, &queue, budget, &results, &fault))
                    .expect("spawning an inference thread")
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
            .map(|t| {
                t.join().unwrap_or_else(|_| ReplicaStats {
                    failure: Some("inference thread panicked".into()),
                    ..ReplicaStats::default()
                })
            })
            .collect();
        if stats.iter().all(|s| s.failure.is_some()) {
            return Err(PoolError::NoReplicaLeft {
                failures: stats
                    .iter()
                    .map(|s| format!("{}: {}", s.device, s.failure.as_deref().unwrap_or("")))
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
    pub fn submit(&self, job: Job<P, T>) -> Result<(), QueueClosed> {
        self.queue.push(job)
    }
}

fn replica_loop<M: VisionLanguageModel, T, E: From<Completed<T>>>(
    replica: Replica<M>,
    queue: &WorkQueue<Job<M::Prepared, T>>,
    budget: BatchBudget,
    results: &Sender<E>,
    fault: &InjectedFault,
) -> ReplicaStats {
    let mut stats = ReplicaStats {
        device: replica.device.clone(),
        ..ReplicaStats::default()
    };
    while let Some(batch) = queue.take_batch(budget) {
        let outcome = if fault.trips() {
            Err((format!("injected device failure ({FAULT_ENV})"), batch))
        } else {
            run_batch(&*replica.model, batch, results, &mut stats)
        };
        if let Err((message, unfinished)) = outcome {
            tracing::error!(
                device = %replica.device,
                requeued = unfinished.len(),
                "inference replica retired: {message}"
            );
            stats.failure = Some(message);
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

/// Runs one batch to completion, splitting it on out-of-memory and invalid-request errors.
/// On a device failure, returns the message and every job not yet answered.
#[allow(clippy::type_complexity)]
fn run_batch<M: VisionLanguageModel, T, E: From<Completed<T>>>(
    model: &M,
    batch: Vec<Job<M::Prepared, T>>,
    results: &Sender<E>,
    stats: &mut ReplicaStats,
) -> Result<(), (String, Vec<Job<M::Prepared, T>>)> {
    // Last in, first out: the first half of a split batch is run first, keeping request order.
    let mut pending = vec![batch];
    while let Some(mut jobs) = pending.pop() {
        let refs: Vec<&M::Prepared> = jobs.iter().map(|j| &j.prepared).collect();
        let started = Instant::now();
        let outcome = model.generate(&refs);
        let latency = started.elapsed();
        stats.busy += latency;
        match outcome {
            Ok(generations) if generations.len() == jobs.len() => {
                stats.batches += 1;
                stats.requests += jobs.len();
                let batch_size = jobs.len();
                for (job, generation) in jobs.into_iter().zip(generations) {
                    stats.generated_tokens += generation.token_ids.len();
                    send(results, job.tag, Ok(generation), latency, batch_size);
                }
            }
            Ok(generations) => {
                let message = format!(
                    "the model returned {} generations for {} requests",
                    generations.len(),
                    jobs.len()
                );
                fail_all(results, jobs, &message, latency);
            }
            Err(ModelError::OutOfMemory(_) | ModelError::InvalidRequest(_)) if jobs.len() > 1 => {
                let second = jobs.split_off(jobs.len() / 2);
                pending.push(second);
                pending.push(jobs);
            }
            Err(error @ (ModelError::OutOfMemory(_) | ModelError::InvalidRequest(_))) => {
                fail_all(results, jobs, &error.to_string(), latency);
            }
            Err(ModelError::Device(message)) => {
                let unfinished = pending.into_iter().rev().flatten();
                return Err((message, jobs.into_iter().chain(unfinished).collect()));
            }
        }
    }
    Ok(())
}

fn fail_all<P, T, E: From<Completed<T>>>(
    results: &Sender<E>,
    jobs: Vec<Job<P, T>>,
    message: &str,
    latency: Duration,
) {
    let batch_size = jobs.len();
    for job in jobs {
        send(
            results,
            job.tag,
            Err(message.to_owned()),
            latency,
            batch_size,
        );
    }
}

fn send<T, E: From<Completed<T>>>(
    results: &Sender<E>,
    tag: T,
    result: Result<Generation, String>,
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
    use crate::test_model::{echo_answer, EchoModel};

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: vec![ContentItem::Text { text: text.into() }],
            }],
            images: Vec::new(),
            max_new_tokens: 32,
        }
    }

    type Answers = Vec<(usize, Result<Generation, String>)>;

    /// Runs `prompts` through a pool of `models` and returns every answer by job index.
    fn run_pool(
        models: Vec<Arc<EchoModel>>,
        prompts: &[String],
        budget: BatchBudget,
    ) -> (Answers, Result<Vec<ReplicaStats>, PoolError>) {
        let (tx, rx) = std::sync::mpsc::channel::<Completed<usize>>();
        let replicas = models
            .iter()
            .enumerate()
            .map(|(i, m)| Replica {
                device: format!("cpu{i}"),
                model: m.clone(),
            })
            .collect();
        let pool = InferencePool::start(replicas, budget, 4, tx);
        let submitter = pool.submitter();
        let preparer = models[0].clone();
        let producer = {
            let prompts = prompts.to_vec();
            std::thread::spawn(move || {
                for (i, prompt) in prompts.iter().enumerate() {
                    let prepared = preparer.prepare(&request(prompt)).unwrap();
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

    #[test]
    fn a_replica_failing_mid_run_loses_and_duplicates_nothing() {
        let flaky = Arc::new(EchoModel::failing_after(3));
        let healthy = Arc::new(EchoModel::waiting_for_failure_of(&flaky));
        let prompts = prompts(200);
        let (answers, stats) = run_pool(vec![flaky.clone(), healthy.clone()], &prompts, WIDE);
        let stats = stats.unwrap();
        let mut by_tag: HashMap<usize, String> = HashMap::new();
        for (tag, result) in answers {
            let previous = by_tag.insert(tag, result.unwrap().text);
            assert!(previous.is_none(), "job {tag} answered twice");
        }
        assert_eq!(by_tag.len(), prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            assert_eq!(by_tag[&i], echo_answer(prompt, &[]));
        }
        assert_eq!(
            stats[0].failure.as_deref(),
            Some("the test device fell over")
        );
        assert!(stats[1].failure.is_none());
        assert_eq!(
            stats.iter().map(|s| s.requests).sum::<usize>(),
            prompts.len()
        );
    }

    #[test]
    fn out_of_memory_batches_are_split_until_they_fit() {
        let model = Arc::new(EchoModel {
            oom_above: Some(3),
            ..EchoModel::default()
        });
        let prompts = prompts(40);
        let (answers, stats) = run_pool(vec![model.clone()], &prompts, WIDE);
        stats.unwrap();
        assert_eq!(answers.len(), prompts.len());
        assert!(answers.iter().all(|(_, r)| r.is_ok()));
        let sizes = model.batch_sizes.lock().unwrap();
        assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), prompts.len());
    }

    #[test]
    fn an_invalid_request_fails_alone() {
        let model = Arc::new(EchoModel::default());
        let mut prompts = prompts(30);
        prompts[17] = "an invalid one".into();
        let (answers, stats) = run_pool(vec![model], &prompts, WIDE);
        stats.unwrap();
        assert_eq!(answers.len(), prompts.len());
        for (tag, result) in answers {
            match result {
                Ok(g) => assert_eq!(g.text, echo_answer(&prompts[tag], &[])),
                Err(message) => {
                    assert_eq!(tag, 17);
                    assert!(message.contains("invalid request"), "{message}");
                }
            }
        }
    }

    #[test]
    fn the_pool_fails_when_no_replica_is_left() {
        let models = (0..2)
            .map(|_| Arc::new(EchoModel::failing_after(1)))
            .collect();
        let (answers, stats) = run_pool(models, &prompts(100), WIDE);
        match stats {
            Err(PoolError::NoReplicaLeft { failures, .. }) => assert_eq!(failures.len(), 2),
            Ok(_) => panic!("the pool finished without replicas"),
        }
        assert!(answers.len() < 100);
        assert!(answers.iter().all(|(_, r)| r.is_ok()));
    }
}
