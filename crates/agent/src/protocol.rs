//! Messages between the engine and the agent. Each is one frame (see [`crate::wire`]); file contents travel
//! as raw bytes right after the frame that announces their length.

use serde::{Deserialize, Serialize};

/// Engine → agent. One request opens a connection; an exec's attachment and stdin connections then carry
/// the follow-up requests documented on each variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Start a command (or, when an exec with the same id exists, find it again). Answered with
    /// [`Response::Exec`]; the connection then is an attachment from offset 0 (see [`Request::Attach`]).
    Exec(ExecRequest),
    /// Follow an exec's journal from the given offsets. Answered with [`Response::Exec`], then
    /// [`Response::Progress`] whenever the journal grows or the exec ends. While attached, the engine reads
    /// the journal files itself and reports how far it has read with [`Request::Ack`]: bytes not yet acked
    /// are never dropped, so a slow reader slows the command instead of losing output.
    Attach {
        /// Exec id.
        exec: String,
        /// Offsets (stdout, stderr) the reader starts at.
        from: [u64; 2],
    },
    /// On an attachment: the reader has consumed everything before these offsets.
    Ack {
        /// Offsets (stdout, stderr).
        pos: [u64; 2],
    },
    /// Signal an exec's whole process tree (on its attachment, or with `exec` set on a connection of its
    /// own). SIGKILL marks it cancelled.
    Signal {
        /// Exec id; empty on an attachment.
        #[serde(default)]
        exec: String,
        /// Signal number.
        signal: i32,
    },
    /// On an attachment of a PTY exec: the terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// List the sandbox's execs; answered with [`Response::Execs`].
    ListExecs,
    /// Open an exec's stdin for writing from byte `offset` on (bytes before what the agent already wrote
    /// are skipped, so a writer resumes by resending from its last acknowledged offset). Answered with
    /// [`Response::StdinAck`]; then [`Request::StdinData`] frames, each answered with a `StdinAck` once
    /// written, and optionally [`Request::StdinClose`].
    Stdin {
        /// Exec id.
        exec: String,
        /// Stream offset of the first byte the writer will send.
        offset: u64,
    },
    /// On a stdin connection: `len` raw bytes follow.
    StdinData {
        /// Number of bytes that follow.
        len: u64,
    },
    /// On a stdin connection: end of file (for a PTY: the terminal's EOF character).
    StdinClose,
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

/// What happens to a running exec when no client is attached to it any more.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum OnDisconnect {
    /// Keep running; the journal keeps its output for a later attach.
    #[default]
    Keep,
    /// Kill its process tree when nobody has re-attached within `grace_ms`.
    Kill {
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
}

/// A terminal size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// One command to run inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ExecRequest {
    /// Exec id chosen by the client (for idempotent retries); the agent makes one up when empty.
    #[serde(default)]
    pub id: String,
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Environment variables added to the sandbox's.
    pub env: Vec<(String, String)>,
    /// Working directory; the sandbox's default when `None`.
    pub cwd: Option<String>,
    /// Kill the process tree after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Whether stdin is a pipe the client writes (otherwise it is `/dev/null`, or the terminal for a PTY).
    pub stdin: bool,
    /// Run under a pseudo-terminal of this size (stdout carries the terminal's output; stderr is empty).
    #[serde(default)]
    pub tty: Option<WinSize>,
    /// stdout and stderr share one pipe, so their interleaving is kept exactly (all output is on stdout).
    #[serde(default)]
    pub merged: bool,
    /// What to do when no client is attached.
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    /// How long the journal is kept after the exec ended and its last reader left.
    #[serde(default)]
    pub retain_ms: Option<u64>,
    /// Bytes of output retained per stream; beyond it the middle is dropped (head and tail kept) when no
    /// reader is attached, and the command is slowed while one is.
    #[serde(default)]
    pub journal_cap: Option<u64>,
}

/// How an exec ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// It exited with a code.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// A signal killed it (not one the agent sent for a timeout, cancel or OOM).
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// Its timeout passed and the agent killed its tree.
    TimedOut,
    /// It was cancelled (killed on request, or nobody re-attached within its disconnect grace).
    Cancelled,
    /// The kernel's OOM killer killed a process of it.
    OomKilled,
    /// It never started.
    FailedToStart {
        /// Why, naming the program.
        reason: String,
        /// The program does not exist or cannot be executed; else the sandbox had no room for the process
        /// (its pids limit, say).
        #[serde(default)]
        missing: bool,
    },
    /// The sandbox ended (or its agent died) before the exec did.
    SandboxGone,
}

impl Default for Ending {
    fn default() -> Self {
        Ending::Exited { code: 0 }
    }
}

/// Resources an exec used (its own cgroup).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Usage {
    /// Wall-clock time from start to end, milliseconds.
    pub wall_ms: u64,
    /// CPU time in user mode, microseconds.
    pub cpu_user_us: u64,
    /// CPU time in kernel mode, microseconds.
    pub cpu_sys_us: u64,
    /// Peak memory of its processes (including page cache), bytes.
    pub peak_memory_bytes: u64,
}

/// An exec's end: why, its wait status, and totals the reader checks what it received against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecEnd {
    /// Why it ended.
    pub ending: Ending,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal that killed it, when one did.
    pub signal: Option<i32>,
    /// Total bytes written (stdout, stderr).
    pub bytes: [u64; 2],
    /// CRC-32 (IEEE) of everything written (stdout, stderr).
    pub crc32: [u32; 2],
    /// Resources used.
    pub usage: Usage,
}

/// What an exec is and how far it has come.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecInfo {
    /// Exec id.
    pub id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Pid inside the sandbox (0 when it never started).
    pub pid: i32,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Whether it runs under a PTY.
    pub tty: bool,
    /// Whether stdout and stderr are merged.
    pub merged: bool,
    /// Whether its stdin is open for writing.
    pub stdin_open: bool,
    /// Bytes of stdin written to the process so far.
    pub stdin_acked: u64,
    /// Bytes journaled so far (stdout, stderr).
    pub written: [u64; 2],
    /// Clients attached now.
    pub attached: u32,
    /// Its end, once it ended.
    pub end: Option<ExecEnd>,
    /// The journal was deleted (retention passed); the output cannot be read any more.
    pub expired: bool,
    /// Journal directory, relative to the sandbox's state directory.
    pub journal: String,
}

/// The state of an exec's journal, sent to attached readers whenever it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes written so far (stdout, stderr): everything below is in the journal files, except dropped bytes.
    pub written: [u64; 2],
    /// Retained head of each stream: bytes below this are never dropped.
    pub head: u64,
    /// Bytes `head..dropped_to` of each stream were dropped to respect the journal cap.
    pub dropped_to: [u64; 2],
    /// Ranges `from..to` of each stream that could not be journaled at all (the host's disk stayed full past
    /// the command's end): readers get them as gaps, never as bytes.
    #[serde(default)]
    pub lost: [Vec<(u64, u64)>; 2],
    /// Set once the exec ended and every byte is journaled.
    pub end: Option<ExecEnd>,
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
    /// The exec, on [`Request::Exec`] and [`Request::Attach`].
    Exec(ExecInfo),
    /// The journal changed (on an attachment).
    Progress(Progress),
    /// The sandbox's execs.
    Execs {
        /// Oldest first.
        execs: Vec<ExecInfo>,
    },
    /// Stdin bytes below `acked` have been written to the process.
    StdinAck {
        /// Stream offset.
        acked: u64,
    },
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
    /// No exec with this id.
    ExecNotFound,
    /// The exec's output was deleted when its retention passed.
    ExecExpired,
    /// An exec id was reused for a different command.
    ExecConflict,
    /// The path is a FIFO, socket or device: only regular files are read or written.
    NotARegularFile,
    /// The path leads outside the sandbox (through a `/proc` magic link): refused.
    NotAllowed,
    /// No space (or quota) left on the filesystem that holds the sandbox's files.
    NoSpace,
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
