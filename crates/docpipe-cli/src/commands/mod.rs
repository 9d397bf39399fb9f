//! One module per subcommand.

pub mod eval;
pub mod render;
pub mod run;
