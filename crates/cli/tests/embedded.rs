//! The suite against the embedded engine.

mod common;
mod suite;

/// Which backend `common::client()` gives.
pub const REMOTE: bool = false;
