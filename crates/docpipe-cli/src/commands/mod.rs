//! One module per subcommand.

pub mod commit;
pub mod eval;
pub mod generate;
pub mod render;
pub mod run;

use tokio::runtime::{Builder, Runtime};

use anyhow::Context;

use crate::exit::{CommandError, ResultExt};

/// Builds a command's tokio runtime for object-store I/O.
pub fn io_runtime(mut builder: Builder) -> Result<Runtime, CommandError> {
    builder
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")
        .incomplete()
}
