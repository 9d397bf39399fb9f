//! The end-to-end tests: one binary (declared in crates/docpipe-cli/Cargo.toml) whose modules
//! each cover a command, so the workspace's heavy dependencies are linked once, not per file.

mod support;

mod eval_anls;
mod eval_docvqa;
mod florence2;
mod generate;
mod hub;
mod idefics1;
mod idefics3;
mod overlap;
mod pipeline_run;
mod render;
mod shards;
