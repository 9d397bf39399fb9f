//! The pool's test hook, compiled only with the `fault-injection` feature (which only
//! docpipe-cli's tests enable), so a release binary never reads [`FAULT_ENV`].
//!
//! The pool's own tests lose replicas through a model double (`EchoModel`); this hook is for the
//! end-to-end tests, which run the real binary with the real model on CPU and have no way to
//! hand it a double.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use docpipe_core::ModelError;

/// `DOCPIPE_INFER_FAULT=batch:N`: the replica that starts the N-th batch (counted over all
/// replicas, from 1; an admission to a continuous batch counts as one) fails it and every later
/// call, decode steps included, as a device that fell over would.
/// `DOCPIPE_INFER_FAULT=request:N`: the N-th request submitted (from 1) fails every batch it is
/// in (or is admitted with), on any replica, as a request that breaks the model would.
pub const FAULT_ENV: &str = "DOCPIPE_INFER_FAULT";

#[derive(Debug, Clone, Copy)]
enum Fault {
    Batch(usize),
    Request(usize),
}

fn fault() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let setting = std::env::var(FAULT_ENV).ok()?;
        let (kind, n) = setting.split_once(':')?;
        let n = n.parse().ok()?;
        match kind {
            "batch" => Some(Fault::Batch(n)),
            "request" => Some(Fault::Request(n)),
            _ => None,
        }
    })
}

/// Batches started and requests submitted in this process. A run has one pool, so these count
/// that pool's; process-wide counts keep the hook out of the pool's types.
static BATCHES: AtomicUsize = AtomicUsize::new(0);
static REQUESTS: AtomicUsize = AtomicUsize::new(0);

/// Counts a request being submitted; true when it is the one [`FAULT_ENV`] poisons.
pub(super) fn poisons_next_request() -> bool {
    let Some(Fault::Request(at)) = fault() else {
        return false;
    };
    REQUESTS.fetch_add(1, Ordering::SeqCst) + 1 == at
}

/// One replica's injected state.
#[derive(Debug, Default)]
pub(super) struct ReplicaFaults {
    broken: bool,
}

impl ReplicaFaults {
    /// Called before each batch or admission; the error to fail it with.
    pub(super) fn before_batch(&mut self, poisoned: bool) -> Result<(), ModelError> {
        if let Some(Fault::Batch(at)) = fault() {
            if BATCHES.fetch_add(1, Ordering::SeqCst) + 1 == at {
                self.broken = true;
            }
        }
        self.before_call()?;
        if poisoned {
            return Err(ModelError::Device(format!(
                "injected request failure ({FAULT_ENV})"
            )));
        }
        Ok(())
    }

    /// Called before a health probe or a decode step: a broken replica fails it.
    pub(super) fn before_call(&self) -> Result<(), ModelError> {
        if self.broken {
            return Err(ModelError::Device(format!(
                "injected device failure ({FAULT_ENV})"
            )));
        }
        Ok(())
    }
}
