//! Messages between the engine and the agent. Each is one frame (see [`crate::wire`]); file contents travel
//! as raw bytes right after the frame that announces their length.

use serde::{Deserialize, Serialize};

/// Engine → agent. One request per connection, except that an exec's connection later carries [`Request::Signal`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Start a command. Answered with [`Response::Started`] carrying the read ends of its stdout and stderr
    /// pipes (and the write end of its stdin pipe when `stdin` is set), then later [`Response::Exited`].
    Exec(ExecRequest),
    /// Signal a running exec's whole process group (sent on the exec's connection). SIGKILL marks it cancelled.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Read a file; answered with [`Response::FileData`] followed by its bytes.
    ReadFile {
        /// Path inside the sandbox (relative paths are relative to the sandbox's working directory).
        path: String,
    },
    /// Write a file (parents created); `len` raw bytes follow this frame. Answered with [`Response::Done`].
    WriteFile {
        /// Path inside the sandbox.
        path: String,
        /// Number of bytes that follow.
        len: u64,
        /// Permission bits for a newly created file.
        mode: u32,
    },
    /// Stop the sandbox: SIGTERM to every process, SIGKILL after `grace_ms`. Answered with [`Response::Done`]
    /// once the main process is gone; the agent exits right after.
    Stop {
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
}

/// One command to run inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Environment variables added to the sandbox's.
    pub env: Vec<(String, String)>,
    /// Working directory; the sandbox's default when `None`.
    pub cwd: Option<String>,
    /// Kill the process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Whether to hand back a stdin pipe (otherwise stdin is `/dev/null`).
    pub stdin: bool,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// Whether the agent killed it because its timeout passed.
    pub timed_out: bool,
    /// Whether the agent killed it because the engine cancelled it (or went away).
    pub cancelled: bool,
}

/// Agent → engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Response {
    /// Reply to [`Request::Ping`].
    Pong {
        /// Pid of the sandbox's main process inside the sandbox.
        main_pid: i32,
    },
    /// The exec is running; its pipe ends ride along as `SCM_RIGHTS` (stdout, stderr[, stdin]).
    Started {
        /// Pid inside the sandbox.
        pid: i32,
    },
    /// The exec's process has ended and its process group has been killed.
    Exited(ExitStatus),
    /// File contents follow: `len` raw bytes.
    FileData {
        /// Number of bytes that follow.
        len: u64,
    },
    /// The request completed.
    Done,
    /// The request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// A human-readable message naming the failing thing.
        message: String,
    },
}

/// Failure classes the engine maps onto its own typed errors.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The path or command does not exist.
    NotFound,
    /// The program could not be found or run.
    CommandNotFound,
    /// Permission denied.
    PermissionDenied,
    /// The path is a directory.
    IsADirectory,
    /// The request is malformed.
    InvalidArgument,
    /// The sandbox is shutting down.
    Stopping,
    /// Anything else.
    Other,
}

/// The agent's configuration, written by the engine to a file the agent reads before it builds the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// How to build the sandbox.
    pub sandbox: hangar_runtime::SandboxSpec,
    /// The sandbox's main command; when it ends, the sandbox ends.
    pub main: Vec<String>,
    /// Environment of every process in the sandbox (the image's, then the sandbox's).
    pub env: Vec<(String, String)>,
    /// Default working directory for the main command, execs and relative file paths.
    pub workdir: String,
    /// The sandbox is stopped (with `stop_grace_ms`) this long after it started.
    pub lifetime_ms: u64,
    /// Grace period between SIGTERM and SIGKILL when the lifetime ends or the agent is sent SIGTERM.
    pub stop_grace_ms: u64,
    /// User the main command and execs run as (`name`, `uid`, `name:group`, `uid:gid`); root when empty.
    #[serde(default)]
    pub user: String,
}

/// Why a sandbox ended, as recorded by its agent in the state directory (`exit.json`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The main command exited by itself.
    Exited,
    /// It was stopped on request.
    Stopped,
    /// Its maximum lifetime passed.
    LifetimeExceeded,
}

/// How a sandbox ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndRecord {
    /// Why.
    pub reason: EndReason,
    /// The main command's exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed the main command, when one did.
    pub signal: Option<i32>,
}

/// File name of the [`EndRecord`] in the sandbox's state directory.
pub const END_RECORD_FILE: &str = "exit.json";
