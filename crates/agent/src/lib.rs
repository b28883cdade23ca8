//! The init agent: PID 1 of every Hangar sandbox. The engine speaks to it in `hangar-agent-protocol`.
//!
//! The agent builds its sandbox (through `hangar_runtime::enter`), starts the sandbox's main command, reaps
//! orphans, and serves requests on a unix socket that lives on the host side only: run execs, each in a
//! process group and cgroup of its own, with its output journaled in the sandbox's host-side state directory
//! so that clients can attach, detach and resume by offset (and a server restart loses nothing); feed their
//! stdin; kill their whole tree on timeout, cancel or disconnect policy; read and write files from inside the
//! sandbox's mount namespace (so no path can resolve to the host); stop the sandbox with a grace period.
//!
//! It is not for policy: what a sandbox is, and its records, belong to the engine.

/// Writes a line to the agent's log (its stderr). Never panics, unlike `eprintln!`: the log may live on a
/// full disk, and losing a log line must not take an exec's output pump down with it.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "hangar-agent: {}", format_args!($($arg)*));
    }};
}
pub(crate) use log;

mod confined;
mod execs;
mod netd;
mod pod;
mod server;
mod spare;
mod state;
mod watchdog;

pub use server::run;
