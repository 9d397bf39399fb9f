//! Process exit codes, as documented in the README and DESIGN.md. Scripts and schedulers branch
//! on them, so their meaning never changes.

/// Everything succeeded: every row answered, every document rendered.
pub const OK: u8 = 0;
/// The run finished but some rows or documents carry errors (the count is printed).
pub const SOME_FAILED: u8 = 1;
/// Usage or configuration error: nothing was run.
pub const USAGE: u8 = 2;
/// The run could not finish (storage unreachable, no device); rerunning resumes.
pub const INCOMPLETE: u8 = 3;
