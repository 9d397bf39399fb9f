//! Process exit codes (README, "Exit codes"; docs/architecture.md). Scripts and schedulers
//! branch on them, so their meaning never changes.
//!
//! Commands never pick a code themselves: they return an [`Outcome`] or a [`CommandError`], and
//! [`code`] is the one place that maps those to 0, 1, 2 or 3 and prints the error line.

use std::process::ExitCode;

/// The exit codes, as every command's `--help` ends.
pub const HELP: &str = "Exit codes: 0 all succeeded, 1 finished with some failures, \
2 usage or configuration error, 3 could not finish (storage unreachable, no device; rerun resumes).";

/// How a command that ran to its end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything succeeded: every row answered, every document rendered. Exit 0.
    Success,
    /// The command finished but some rows or documents carry errors (the count is printed).
    /// Exit 1.
    SomeFailed,
}

impl Outcome {
    /// `SomeFailed` when `failures` is non-zero.
    pub fn from_failures(failures: u64) -> Self {
        if failures == 0 {
            Outcome::Success
        } else {
            Outcome::SomeFailed
        }
    }
}

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Usage or configuration error: nothing was run. Exit 2.
    #[error("{0:#}")]
    Usage(anyhow::Error),
    /// The command could not finish (storage unreachable, no device, workers could not start).
    /// Exit 3; rerunning resumes.
    #[error("{0:#}")]
    Incomplete(anyhow::Error),
}

/// Errors that can be either kind: they know whether the input is at fault.
pub trait Classify {
    /// True for a usage or configuration error (exit 2), false when the machine or the
    /// storage failed (exit 3).
    fn is_usage(&self) -> bool;
}

/// The library errors that classify themselves with an inherent `is_usage`.
macro_rules! classify_with_is_usage {
    ($($error:ty),+ $(,)?) => {
        $(impl Classify for $error {
            fn is_usage(&self) -> bool {
                <$error>::is_usage(self)
            }
        })+
    };
}

classify_with_is_usage!(
    docpipe_pipeline::RunError,
    docpipe_eval::DatasetError,
    docpipe_eval::PredictionsError,
    docpipe_hub::HubError,
    docpipe_vlm::DeviceError,
    docpipe_pipeline::model::ModelLoadError,
);

/// Turns a `Result`'s error into a [`CommandError`] of the right kind.
pub trait ResultExt<T, E> {
    /// A configuration or input error: exit 2.
    fn usage(self) -> Result<T, CommandError>;
    /// The machine or storage failed: exit 3.
    fn incomplete(self) -> Result<T, CommandError>;
    /// Whichever of the two the error says it is.
    fn classified(self) -> Result<T, CommandError>
    where
        E: Classify;
}

impl<T, E: Into<anyhow::Error>> ResultExt<T, E> for Result<T, E> {
    fn usage(self) -> Result<T, CommandError> {
        self.map_err(|e| CommandError::Usage(e.into()))
    }

    fn incomplete(self) -> Result<T, CommandError> {
        self.map_err(|e| CommandError::Incomplete(e.into()))
    }

    fn classified(self) -> Result<T, CommandError>
    where
        E: Classify,
    {
        self.map_err(|e| {
            if e.is_usage() {
                CommandError::Usage(e.into())
            } else {
                CommandError::Incomplete(e.into())
            }
        })
    }
}

/// The exit code of a command's result, printing the error (one `error:` line) when there is one.
pub fn code(result: Result<Outcome, CommandError>) -> ExitCode {
    let code = match result {
        Ok(Outcome::Success) => 0,
        Ok(Outcome::SomeFailed) => 1,
        Err(CommandError::Usage(error)) => {
            eprintln!("error: {error:#}");
            2
        }
        Err(CommandError::Incomplete(error)) => {
            eprintln!("error: {error:#}");
            eprintln!("the command did not finish; rerun the same command to resume");
            3
        }
    };
    ExitCode::from(code)
}
