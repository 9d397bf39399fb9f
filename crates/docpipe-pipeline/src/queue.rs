//! The bounded queue between preparation and the inference replicas.
//!
//! Producers block while it is full (back-pressure reaches the renderer). Replicas take whole
//! batches under one lock, sized by a token and a patch budget rather than a count; a replica
//! batching continuously also tops its running batch up between decode steps without blocking
//! ([`WorkQueue::take_more`]). Work handed back by a failed replica goes to the front, past the
//! bound, so retiring a replica can never block on the producers it is supposed to help.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use docpipe_core::RequestCost;

/// Limits on one batch. A request larger than a budget on its own still forms a batch of one.
///
/// Under continuous batching the token budget bounds the rows live in the running batch (their
/// keys and values grow to prompt plus max new tokens), and the patch budget each group of
/// requests admitted together (the vision encoder only runs at admission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBudget {
    /// Sum of prompt tokens plus max new tokens.
    pub tokens: usize,
    /// Sum of vision patches, each image group counted once.
    pub patches: usize,
}

/// What the queue needs to know of a job to batch it.
pub trait Batchable {
    fn cost(&self) -> RequestCost;
    /// Requests with the same group share their images (the same page), which the model
    /// encodes once per batch; their patches count once.
    fn image_group(&self) -> u64;
}

/// Why a push was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueClosed {
    /// Every replica has retired, so the job would never run.
    #[error("no inference replica is left")]
    NoReplica,
    /// The pool is finishing and takes no more jobs.
    #[error("the inference queue is closed")]
    Closed,
}

struct State<J> {
    jobs: VecDeque<J>,
    closed: bool,
    replicas: usize,
    /// Batches taken and not yet finished (a running continuous batch counts as one, however
    /// many jobs join it): while one runs, its replica may still fail and hand its work back, so
    /// an empty closed queue is not yet drained.
    in_flight: usize,
}

pub struct WorkQueue<J> {
    state: Mutex<State<J>>,
    capacity: usize,
    not_empty: Condvar,
    not_full: Condvar,
}

impl<J: Batchable> WorkQueue<J> {
    pub fn new(capacity: usize, replicas: usize) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
                replicas,
                in_flight: 0,
            }),
            capacity: capacity.max(1),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // A replica that panicked while holding the lock left the queue itself consistent (every
        // operation completes its mutation before anything that could panic).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks while the queue is full.
    pub fn push(&self, job: J) -> Result<(), QueueClosed> {
        let mut state = self.lock();
        loop {
            if state.replicas == 0 {
                return Err(QueueClosed::NoReplica);
            }
            if state.closed {
                return Err(QueueClosed::Closed);
            }
            if state.jobs.len() < self.capacity {
                break;
            }
            state = self.not_full.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.jobs.push_back(job);
        drop(state);
        self.not_empty.notify_one();
        Ok(())
    }

    /// No more pushes; replicas drain what is left and then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    /// Blocks until work is available and returns the next batch within `budget`, or `None`
    /// once the queue is closed and drained. Every batch returned must be followed by
    /// [`WorkQueue::batch_done`] or [`WorkQueue::retire_replica`].
    pub fn take_batch(&self, budget: BatchBudget) -> Option<Vec<J>> {
        let mut state = self.lock();
        while state.jobs.is_empty() {
            if state.closed && state.in_flight == 0 {
                return None;
            }
            state = self
                .not_empty
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        let batch = take_within(&mut state.jobs, budget, true);
        state.in_flight += 1;
        drop(state);
        self.not_full.notify_all();
        Some(batch)
    }

    /// The jobs at the front that fit in `budget` together, without blocking; none when the
    /// first does not fit. For a replica whose batch from [`WorkQueue::take_batch`] is still
    /// running: they join it, and its `batch_done` or `retire_replica` covers them too.
    pub fn take_more(&self, budget: BatchBudget) -> Vec<J> {
        let mut state = self.lock();
        let more = take_within(&mut state.jobs, budget, false);
        drop(state);
        if !more.is_empty() {
            self.not_full.notify_all();
        }
        more
    }

    /// A batch from [`WorkQueue::take_batch`] was answered.
    pub fn batch_done(&self) {
        let mut state = self.lock();
        state.in_flight -= 1;
        let drained = state.closed && state.in_flight == 0 && state.jobs.is_empty();
        drop(state);
        if drained {
            self.not_empty.notify_all();
        }
    }

    /// Puts a failed replica's work back at the front and retires the replica. Returns how many
    /// replicas are left; at zero every push fails from now on.
    pub fn retire_replica(&self, unfinished: Vec<J>) -> usize {
        let mut state = self.lock();
        state.in_flight -= 1;
        for job in unfinished.into_iter().rev() {
            state.jobs.push_front(job);
        }
        state.replicas = state.replicas.saturating_sub(1);
        let left = state.replicas;
        drop(state);
        self.not_empty.notify_all();
        self.not_full.notify_all();
        left
    }

    /// Jobs nobody will run (only non-zero when every replica failed).
    pub fn abandoned(&self) -> usize {
        let state = self.lock();
        if state.replicas == 0 {
            state.jobs.len()
        } else {
            0
        }
    }
}

/// Pops the jobs at the front of `jobs` while they fit in `budget` together; the first one
/// even when it alone does not, if `first_regardless`.
fn take_within<J: Batchable>(
    jobs: &mut VecDeque<J>,
    budget: BatchBudget,
    first_regardless: bool,
) -> Vec<J> {
    let mut batch: Vec<J> = Vec::new();
    let (mut tokens, mut patches) = (0usize, 0usize);
    while let Some(job) = jobs.front() {
        let cost = job.cost();
        let job_tokens = cost.prompt_tokens + cost.max_new_tokens;
        let group = job.image_group();
        let job_patches = if batch.iter().any(|b| b.image_group() == group) {
            0
        } else {
            cost.image_patches
        };
        let fits = tokens + job_tokens <= budget.tokens && patches + job_patches <= budget.patches;
        let admitted_anyway = first_regardless && batch.is_empty();
        if !(fits || admitted_anyway) {
            break;
        }
        tokens += job_tokens;
        patches += job_patches;
        batch.extend(jobs.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct J {
        id: usize,
        tokens: usize,
        patches: usize,
        group: u64,
    }

    impl Batchable for J {
        fn cost(&self) -> RequestCost {
            RequestCost {
                prompt_tokens: self.tokens,
                max_new_tokens: 0,
                image_patches: self.patches,
            }
        }
        fn image_group(&self) -> u64 {
            self.group
        }
    }

    fn job(id: usize, tokens: usize, patches: usize, group: u64) -> J {
        J {
            id,
            tokens,
            patches,
            group,
        }
    }

    fn ids(batch: &[J]) -> Vec<usize> {
        batch.iter().map(|j| j.id).collect()
    }

    #[test]
    fn batches_follow_token_and_patch_budgets() {
        let queue = WorkQueue::new(100, 1);
        for (id, tokens, patches, group) in [
            (0, 40, 100, 1),
            (1, 40, 100, 1), // same page: its patches are already counted
            (2, 40, 100, 2), // too many tokens with 0 and 1
            (3, 10, 100, 3),
            (4, 10, 100, 4), // a third distinct image exceeds the patch budget
            (5, 500, 0, 5),  // alone over the token budget: still served, alone
        ] {
            queue.push(job(id, tokens, patches, group)).unwrap();
        }
        queue.close();
        let budget = BatchBudget {
            tokens: 100,
            patches: 200,
        };
        let mut batches = Vec::new();
        while let Some(batch) = queue.take_batch(budget) {
            batches.push(ids(&batch));
            queue.batch_done();
        }
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]);
    }

    #[test]
    fn taking_more_keeps_order_within_the_budget_left_and_opens_no_batch() {
        let queue = WorkQueue::new(10, 1);
        for (id, tokens) in [(0, 50), (1, 30), (2, 30), (3, 10)] {
            queue.push(job(id, tokens, 0, id as u64)).unwrap();
        }
        let budget = |tokens| BatchBudget { tokens, patches: 0 };
        assert_eq!(ids(&queue.take_batch(budget(50)).unwrap()), vec![0]);
        // Job 3 would fit, but job 1 is first and does not: none jumps the queue.
        assert!(queue.take_more(budget(20)).is_empty());
        assert_eq!(ids(&queue.take_more(budget(70))), vec![1, 2, 3]);
        queue.close();
        // One batch was taken, so one `batch_done` drains the queue.
        queue.batch_done();
        assert!(queue.take_batch(budget(50)).is_none());
    }

    #[test]
    fn retired_work_comes_first_and_the_last_replica_closes_the_queue() {
        let queue = WorkQueue::new(10, 2);
        queue.push(job(7, 1, 0, 7)).unwrap();
        assert_eq!(
            ids(&queue
                .take_batch(BatchBudget {
                    tokens: 1,
                    patches: 0
                })
                .unwrap()),
            vec![7]
        );
        assert_eq!(
            queue.retire_replica(vec![job(1, 1, 0, 1), job(2, 1, 0, 2)]),
            1
        );
        let budget = BatchBudget {
            tokens: 2,
            patches: 0,
        };
        assert_eq!(ids(&queue.take_batch(budget).unwrap()), vec![1, 2]);
        assert_eq!(queue.retire_replica(vec![job(2, 1, 0, 2)]), 0);
        assert_eq!(queue.push(job(8, 1, 0, 8)), Err(QueueClosed::NoReplica));
        assert_eq!(queue.abandoned(), 1);
    }

    #[test]
    fn a_full_queue_blocks_the_producer_until_a_batch_is_taken() {
        let queue = std::sync::Arc::new(WorkQueue::new(2, 1));
        let producer = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for id in 0..6 {
                    queue.push(job(id, 1, 0, id as u64)).unwrap();
                }
                queue.close();
            })
        };
        let budget = BatchBudget {
            tokens: 1,
            patches: 0,
        };
        let mut seen = Vec::new();
        while let Some(batch) = queue.take_batch(budget) {
            assert!(queue.lock().jobs.len() <= 2);
            seen.extend(ids(&batch));
            queue.batch_done();
        }
        producer.join().unwrap();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
    }
}
