//! The init agent: PID 1 of every Hangar sandbox, and the protocol the engine speaks to it.
//!
//! The agent builds its sandbox (through `hangar_runtime::enter`), starts the sandbox's main command, reaps
//! orphans, and serves requests on a unix socket that lives on the host side only: run an exec (handing the
//! process's pipe ends to the engine with `SCM_RIGHTS`, so output never takes an extra copy), report its end,
//! kill its whole process group on timeout or cancel, read and write files from inside the sandbox's mount
//! namespace (so no path can resolve to the host), and stop the sandbox with a grace period.
//!
//! It is not for policy: what a sandbox is, and its records, belong to the engine.

pub mod protocol;
mod server;
pub mod wire;

pub use server::run;
