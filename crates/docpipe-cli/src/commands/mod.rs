//! One module per subcommand.

pub mod commit;
pub mod eval;
pub mod generate;
pub mod render;
pub mod run;
