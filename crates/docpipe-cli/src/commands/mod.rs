//! One module per subcommand.

pub mod commit;
pub mod eval;
pub mod generate;
pub mod render;
pub mod run;

use tokio::runtime::{Builder, Runtime};

use crate::exit;

/// Builds a command's tokio runtime for object-store I/O. On failure it prints why and gives the
/// exit code the command returns, so every command reports the same message and code.
pub fn io_runtime(mut builder: Builder) -> Result<Runtime, u8> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the I/O runtime: {e}");
        exit::INCOMPLETE
    })
}
