//! One module per group of subcommands; `main.rs` parses and dispatches.

pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod images;
pub(crate) mod sandboxes;
pub(crate) mod serve;
