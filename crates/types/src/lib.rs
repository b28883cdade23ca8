//! Hangar's one vocabulary: what a sandbox and an exec are, what happens to them, and why a request is
//! refused. Every layer speaks these types — the SDK, the server and its gRPC conversions, the engine and the
//! agent — so a value (a timeout, an ending, a start failure) is one thing from the caller down to the
//! process and back, and every rule about it is checked in one place ([`ExecSpec::validate`],
//! [`SandboxConfig::validate`]).
//!
//! This crate holds data and rules only: no I/O, no async, no platform code. It is not the wire format of
//! any API: `hangar-proto` translates these types to and from `hangar.v1`, once, and the agent protocol
//! carries them as JSON.

mod exec;
mod network;
pub mod quantity;
mod reason;
mod sandbox;

pub use exec::{
    valid_exec_id, Ending, ExecEnd, ExecEvent, ExecInfo, ExecSpec, Next, OnDisconnect, Output, OutputStream,
    StartFailure, StartFailureKind, Usage,
};
pub use network::{NetTarget, NetworkMode, NetworkPolicy, DEFAULT_DENIED, MAX_NET_TARGETS};
pub use reason::{FileErrorKind, Reason};
pub use sandbox::{SandboxConfig, SandboxInfo, SandboxState};

use std::time::Duration;

/// The built-in image's reference: the host's own userland, read-only.
pub const BUILTIN_IMAGE: &str = "builtin";
/// Default grace between SIGTERM and SIGKILL when stopping a sandbox.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Default maximum lifetime of a sandbox.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime (and journal retention) a request may ask for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest stop grace a request may ask for.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
/// Default limit on processes and threads in a sandbox (a fork bomb stops here).
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
/// Largest memory limit a sandbox may ask for (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// Smallest memory limit a sandbox may ask for (8 MiB).
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;
/// Most CPU cores a sandbox may ask for.
pub const MAX_CPUS: f64 = 1024.0;
/// Largest journal cap per stream an exec may ask for (64 GiB).
pub const MAX_JOURNAL_CAP: u64 = 64 << 30;
/// How long an exec's journal is kept after it ended and its last reader left, unless the exec says otherwise.
pub const DEFAULT_EXEC_RETAIN: Duration = Duration::from_secs(600);
/// Bytes of output an exec's journal keeps per stream unless the exec says otherwise: its first 8 MiB, and
/// the latest 120 MiB in a ring that streaming goes round in place (see `hangar_journal::Writer::streamed`).
pub const DEFAULT_JOURNAL_CAP: u64 = 128 << 20;
/// Bytes all of a sandbox's exec journals may hold together unless the engine says otherwise (see the agent's
/// `Workload::journal_budget`).
pub const DEFAULT_JOURNAL_BUDGET: u64 = 4 << 30;
/// The exec id of a sandbox's main command. Its output (stdout and stderr on one pipe, in the order it was
/// written) is journaled like an exec's: attaching to this id follows the sandbox's logs, also after the
/// sandbox ended, until its record is removed. Clients cannot start an exec of their own with this id.
pub const MAIN_EXEC: &str = "main";
/// Bytes of the main command's output kept (beyond it, the first 8 MiB and the newest bytes survive).
pub const LOG_JOURNAL_CAP: u64 = 64 << 20;
/// Longest client-chosen request id.
pub const MAX_REQUEST_ID: usize = 256;

/// A request that breaks a rule: which field, and what is wrong with it. Every API answers it as its own
/// "invalid argument" error, with this text.
///
/// ```
/// let e = hangar_types::ExecSpec::new(Vec::<String>::new()).validate().unwrap_err();
/// assert_eq!(e.to_string(), "argv: the command is empty");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as the APIs name it (`argv`, `timeout`, `memory_bytes`, ...).
    pub field: &'static str,
    /// What is wrong, naming the value.
    pub message: String,
}

impl Invalid {
    /// A broken rule of `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}

/// Checks a program and its arguments: a non-empty `argv[0]`, no NUL byte anywhere.
pub(crate) fn check_argv(field: &'static str, argv: &[String]) -> Result<(), Invalid> {
    match argv.first() {
        None => return Err(Invalid::new(field, "the command is empty")),
        Some(a) if a.is_empty() => return Err(Invalid::new(field, "argv[0] is empty")),
        _ => {}
    }
    match argv.iter().find(|a| a.contains('\0')) {
        Some(a) => Err(Invalid::new(field, format!("argument {a:?} contains a NUL byte"))),
        None => Ok(()),
    }
}

/// Checks environment variables: names without `=` or NUL, values without NUL.
pub(crate) fn check_env(env: &[(String, String)]) -> Result<(), Invalid> {
    match env.iter().find(|(k, v)| k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0')) {
        Some((k, _)) => Err(Invalid::new("env", format!("{k:?} is not a valid variable"))),
        None => Ok(()),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
