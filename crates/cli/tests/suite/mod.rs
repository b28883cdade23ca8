//! The behaviour every backend must have: run by `embedded.rs` against the engine in-process and by
//! `remote.rs` through a real server on loopback.

mod containment;
mod exec;
mod journal;
mod logs;
mod sandbox;
