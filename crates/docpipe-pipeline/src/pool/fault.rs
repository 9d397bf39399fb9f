//! The pool's test hook, compiled only with the `fault-injection` feature (which only
//! docpipe-cli's tests enable), so a release binary never reads [`FAULT_ENV`].
//!
//! The pool's own tests lose replicas through a model double (`EchoModel::failing_after`); this
//! hook is for the end-to-end tests, which run the real binary with the real model on CPU and
//! have no way to hand it a double.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use docpipe_core::ModelError;

/// With `DOCPIPE_INFER_FAULT=N`, the N-th batch started (counted over all replicas, from 1)
/// fails as a device failure would, retiring the replica that took it.
pub const FAULT_ENV: &str = "DOCPIPE_INFER_FAULT";

/// Batches started in this process. A run has one pool, so this counts that pool's batches;
/// a process-wide count keeps the hook out of the pool's types.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// Counts a batch starting; the device error to fail it with when it is the one [`FAULT_ENV`]
/// names.
pub(super) fn trips() -> Option<ModelError> {
    static AT: OnceLock<Option<usize>> = OnceLock::new();
    let at = (*AT.get_or_init(|| std::env::var(FAULT_ENV).ok()?.parse().ok()))?;
    let started = STARTED.fetch_add(1, Ordering::SeqCst) + 1;
    (started == at).then(|| ModelError::Device(format!("injected device failure ({FAULT_ENV})")))
}
