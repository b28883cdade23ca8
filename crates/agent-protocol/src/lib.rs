//! The engine ⇄ agent protocol: the messages, their one framing ([`codec`]), and the protocol version.
//!
//! Sandboxes outlive engine upgrades, so an engine meets agents older than itself. Each agent states its
//! [`VERSION`] when it reports ready ([`StartReport::Ready`]); the engine keeps it with the sandbox's record
//! and speaks to it only if it lies in [`MIN_VERSION`]`..=`[`VERSION`]. Version 1 (unversioned, before this
//! crate existed) sends the same JSON shapes; version 2 adds typed start failures and the attachment
//! requests [`Request::Detach`] and [`Request::Hold`], never sent to a version-1 agent; version 3 adds inline
//! journals ([`Request::Inline`]: the journal's bytes travel on the connection, for an engine that cannot read
//! the agent's files, as with a Pod's agent); version 4 sends a file's bytes in chunks ([`Request::ReadFile`]),
//! so a file that shrank while it was read is told from a sandbox that went away, at once; version 5 takes
//! [`Request::Resize`] on a stdin connection too, in order with the bytes around it (a resize on the exec's
//! attachment races stdin sent on its own connection). A change that an older peer cannot read needs a new version, and
//! the test `wire_format_is_pinned` shows what each message looks like on the wire.
//!
//! Exec specs, endings and infos are the shared `hangar-types` values themselves: nothing is translated
//! between the engine and the agent.

use serde::{Deserialize, Serialize};

pub mod codec;
pub mod remote;
pub use codec::{Conn, Writer};
pub use hangar_journal::Progress;
pub use hangar_types::{
    Ending, ExecEnd, ExecInfo, ExecSpec, OnDisconnect, OutputStream, StartFailure, StartFailureKind, Usage,
};

/// The protocol version this build speaks.
pub const VERSION: u32 = 5;
/// The oldest agent version this build still speaks to.
pub const MIN_VERSION: u32 = 1;

/// What an agent reports, once, on its status pipe: its sandbox runs, or why it could not start. One line
/// of text ([`StartReport::line`]), so that a failure is readable in a log too.
///
/// ```
/// use hangar_agent_protocol::{StartReport, StartFailure, StartFailureKind, VERSION};
/// let ready = StartReport::Ready { main_pid: 7, version: VERSION };
/// assert_eq!(StartReport::parse(&ready.line()), Some(ready));
/// assert_eq!(StartReport::parse("ok 7"), Some(StartReport::Ready { main_pid: 7, version: 1 }));
/// let missing = StartReport::CommandFailed(StartFailure::new(StartFailureKind::NotFound, "command not found: x"));
/// assert_eq!(StartReport::parse(&missing.line()), Some(missing));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReport {
    /// The sandbox runs its main command; the agent speaks protocol `version`.
    Ready {
        /// The main command's pid inside the sandbox.
        main_pid: i32,
        /// The agent's protocol version (1 for agents that did not say).
        version: u32,
    },
    /// The main command could not be started.
    CommandFailed(StartFailure),
    /// The sandbox could not be built.
    Failed(String),
}

impl StartReport {
    /// The report as its status line (without the newline).
    pub fn line(&self) -> String {
        match self {
            StartReport::Ready { main_pid, version } => format!("ok {main_pid} protocol={version}"),
            StartReport::CommandFailed(f) => {
                format!("command {}", serde_json::to_string(f).unwrap_or_else(|_| "{}".into()))
            }
            StartReport::Failed(message) => format!("error: {}", message.replace('\n', " ")),
        }
    }

    /// The report a status line states, or `None` when it is not one.
    pub fn parse(line: &str) -> Option<Self> {
        if let Some(rest) = line.strip_prefix("ok ") {
            let mut words = rest.split_whitespace();
            let main_pid = words.next()?.parse().ok()?;
            let version = words.find_map(|w| w.strip_prefix("protocol=")).and_then(|v| v.parse().ok()).unwrap_or(1);
            return Some(StartReport::Ready { main_pid, version });
        }
        if let Some(json) = line.strip_prefix("command ") {
            return serde_json::from_str(json).ok().map(StartReport::CommandFailed);
        }
        line.strip_prefix("error: ").map(|m| StartReport::Failed(m.to_string()))
    }
}

/// Engine → agent. One request opens a connection; an exec's attachment and stdin connections then carry
/// the follow-up requests documented on each variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; answered with [`Response::Pong`].
    Ping,
    /// Start a command (or, when an exec with the same id exists, find it again). Answered with
    /// [`Response::Exec`]; the connection then is an attachment from offset 0 (see [`Request::Attach`]).
    Exec(ExecSpec),
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
    /// On an attachment: the reader leaves deliberately (its client went away); the exec's
    /// [`OnDisconnect`] policy applies from now. An attachment that just breaks, without this, is a reader
    /// that died (an engine or server process), and may be given longer ([`Request::Hold`]). Version 2.
    Detach,
    /// On an attachment: if this attachment breaks without [`Request::Detach`], wait at least `grace_ms`
    /// before applying the exec's disconnect policy, so that a server that restarts finds its clients' execs
    /// still running. Version 2.
    Hold {
        /// Milliseconds.
        grace_ms: u64,
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
    /// On an attachment of a PTY exec: the terminal's new size. From version 5 also on a stdin connection
    /// ([`Request::Stdin`]), where it is applied after the stdin sent before it and before any sent after,
    /// and answered with [`Response::StdinAck`].
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
    /// Read a file; answered with [`Response::FileData`] (its length), then (protocol 4 on) its bytes in
    /// [`Response::FileChunk`]s and [`Response::Done`] — or, when the file shrank or failed while it was read,
    /// [`Response::Error`] in place of the rest. (Protocols 1 to 3: `len` raw bytes follow `FileData`.)
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
    /// Stop the sandbox: SIGTERM to every process, SIGKILL after `grace_ms`. Answered with
    /// [`Response::Stopped`] (version 3; [`Response::Done`] before) once every process is gone; the agent exits
    /// right after.
    Stop {
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
    /// First on a connection, before [`Request::Exec`] or [`Request::Attach`]: the journal travels inline. The
    /// agent reads its own journal files and sends what they hold from the reader's offsets on as
    /// [`Response::Output`] (with the bytes), [`Response::Gap`] and, after the last byte, [`Response::Ended`],
    /// instead of [`Response::Progress`] snapshots; acks still say what the reader consumed, and the agent keeps
    /// at most [`INLINE_WINDOW`] bytes unacknowledged in flight. Version 3.
    Inline,
    /// On an inline attachment: start again at the last `lines` lines of each stream (as journaled now; never
    /// inside a range the cap dropped). Answered, after any output already in flight, with
    /// [`Response::Seeked`]. Version 3.
    SeekTail {
        /// Lines per stream; `u64::MAX` for everything still kept.
        lines: u64,
    },
    /// On an inline attachment: move stdout's start to the first bytes written at or after `ms` (Unix
    /// milliseconds; the main command's log keeps times). Answered like [`Request::SeekTail`]. Version 3.
    SeekSince {
        /// Unix milliseconds.
        ms: u64,
    },
}

/// Most bytes of an inline journal the agent sends beyond what the reader acknowledged (see
/// [`Request::Inline`]): enough to keep a stream through a slow transport busy, small enough that a reader
/// that stalls costs the agent little.
pub const INLINE_WINDOW: u64 = 8 << 20;

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
    /// A file's length; its contents follow (see [`Request::ReadFile`]).
    FileData {
        /// The file's length.
        len: u64,
    },
    /// The next `len` bytes of a file being read follow this frame, raw.
    FileChunk {
        /// Number of bytes that follow.
        len: u64,
    },
    /// The request completed.
    Done,
    /// On an inline attachment: `len` bytes of output follow, from `offset` of `stream`.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// Stream offset of the first byte.
        offset: u64,
        /// Number of bytes that follow.
        len: u64,
    },
    /// On an inline attachment: bytes `from..to` of `stream` are not in the journal (its cap dropped them, or
    /// the disk had no room).
    Gap {
        /// Which stream.
        stream: OutputStream,
        /// First missing offset.
        from: u64,
        /// Offset of the next byte the journal has.
        to: u64,
    },
    /// On an inline attachment: every byte was sent; the exec ended so.
    Ended(ExecEnd),
    /// On an inline attachment: the reader starts at `pos` now (after [`Request::SeekTail`] or
    /// [`Request::SeekSince`]); output sent before this is to be discarded.
    Seeked {
        /// Offsets (stdout, stderr).
        pos: [u64; 2],
    },
    /// The sandbox stopped, so (the answer to [`Request::Stop`]). Version 3.
    Stopped(EndRecord),
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
    /// The file shrank while it was read.
    Changed,
    /// Anything else.
    Other,
}

/// The agent's configuration on the local backend, written by the engine to a file the agent reads before it
/// builds the sandbox: how to build it, and what runs in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// How to build the sandbox.
    pub sandbox: hangar_runtime::SandboxSpec,
    /// What runs in it (its fields sit beside `sandbox` in the file, as before the split).
    #[serde(flatten)]
    pub workload: Workload,
    /// Keep a spare exec helper ready (see the agent's `spare` module): worth it where moving a process into
    /// a cgroup waits for an RCU grace period, a waste of a process where migrations are cheap.
    #[serde(default = "yes")]
    pub spare_helpers: bool,
}

fn yes() -> bool {
    true
}

/// What runs in a sandbox, whoever built it: the agent's configuration on every backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workload {
    /// The sandbox's main command; when it ends, the sandbox ends. Empty: no main command (the sandbox idles).
    pub main: Vec<String>,
    /// Environment of every process in the sandbox (the image's, then the sandbox's).
    pub env: Vec<(String, String)>,
    /// Default working directory for the main command, execs and relative file paths.
    pub workdir: String,
    /// The sandbox is stopped (with `stop_grace_ms`) this long after it started.
    pub lifetime_ms: u64,
    /// Grace period between SIGTERM and SIGKILL when the lifetime ends or the agent is sent SIGTERM.
    pub stop_grace_ms: u64,
    /// User the main command and execs run as (`name`, `uid`, `name:group`, `uid:gid`); the agent's own when
    /// empty.
    #[serde(default)]
    pub user: String,
    /// Bytes all exec journals may hold together (not the sandbox's log), [`hangar_types::DEFAULT_JOURNAL_BUDGET`]
    /// unless set: past it, the journals of ended execs nobody reads are expired early, oldest first (a
    /// later attach gets `ExecExpired`, as after their retention). Running execs are bounded by their caps.
    #[serde(default)]
    pub journal_budget: Option<u64>,
}

/// The argument that makes `hangar-agent` a Pod's agent: `hangar-agent pod`, with its [`PodConfig`] as JSON in
/// the environment variable [`POD_CONFIG_ENV`]. The container it starts in is the sandbox (the kubelet built
/// it from the user's image); the agent serves [`remote`] streams on [`PodConfig::listen`].
pub const POD_ARG: &str = "pod";
/// The argument that makes `hangar-agent` copy itself: `hangar-agent install DEST` (a Pod's init container
/// puts the agent where the sandbox container starts it from, without a shell or `cp` in the agent's image).
pub const INSTALL_ARG: &str = "install";
/// The environment variable holding a Pod agent's [`PodConfig`] (removed from what sandbox processes see).
pub const POD_CONFIG_ENV: &str = "HANGAR_POD_CONFIG";

/// A Pod agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodConfig {
    /// What runs. Its `env` comes after the container's own environment (the image's and the Pod's); an
    /// empty `workdir` is the container's working directory (the image's).
    pub workload: Workload,
    /// The SHA-256 of the sandbox's token ([`remote::token_digest`]).
    pub token_digest: String,
    /// Where the agent listens (inside the Pod's network namespace).
    pub listen: std::net::SocketAddr,
    /// The agent's state directory (journals, its end record), on a volume the workload does not need.
    pub state_dir: std::path::PathBuf,
    /// Where the sandbox's end is left for Kubernetes to keep in the Pod's status (the container's
    /// `terminationMessagePath`): its [`EndRecord`] as JSON, or the [`StartReport`] line of a main command
    /// that could not start.
    #[serde(default = "default_termination_log")]
    pub termination_log: std::path::PathBuf,
}

fn default_termination_log() -> std::path::PathBuf {
    "/dev/termination-log".into()
}

/// Where a Pod's agent listens unless told otherwise.
pub const POD_AGENT_PORT: u16 = 7070;

/// What a sandbox's network helper (`hangar-agent netd DIR`, one per sandbox with a network, in the host's
/// network namespace) serves: the sandbox's resolver on its gateway address, answering by the policy and
/// allowing the addresses of allowed names in the sandbox's rules. Written by the engine as [`NETD_FILE`] in
/// the sandbox's state directory; the helper reads it again on SIGHUP (a changed policy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetdConfig {
    /// The sandbox's network.
    pub net: hangar_runtime::net::SandboxNet,
    /// What it may reach.
    pub policy: hangar_types::NetworkPolicy,
    /// The resolvers questions are forwarded to, tried in order.
    pub upstreams: Vec<std::net::SocketAddr>,
}

impl NetdConfig {
    /// The configuration in the sandbox state directory `dir` ([`NETD_FILE`]).
    pub fn load(dir: &std::path::Path) -> Result<Self, String> {
        let path = dir.join(NETD_FILE);
        let body = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        serde_json::from_slice(&body).map_err(|e| format!("parse {}: {e}", path.display()))
    }
}

/// The network helper's configuration file, in the sandbox's state directory.
pub const NETD_FILE: &str = "net.json";
/// The network helper's pid, in the sandbox's state directory.
pub const NETD_PID_FILE: &str = "netd.pid";
/// The argument that makes `hangar-agent` the network helper.
pub const NETD_ARG: &str = "netd";
/// The argument that makes `hangar-agent` a published port's proxy: `hangar-agent publish AGENT_PID
/// AGENT_START PORT`, its listening socket (in the host's network namespace) on stdin. It joins the sandbox's
/// network namespace and connects every accepted connection to `127.0.0.1:PORT` there, so a server the
/// sandbox binds to its loopback is published too, with or without a network; it leaves with the agent.
pub const PUBLISH_ARG: &str = "publish";
/// The sandbox's published ports (a JSON list of [`PublishedPort`]), in its state directory.
pub const PORTS_FILE: &str = "ports.json";

/// A port of a sandbox published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The port inside the sandbox.
    pub port: u16,
    /// Where it is reachable on the host.
    pub address: std::net::SocketAddr,
    /// The proxy's pid and start time.
    pub pid: i32,
    /// The proxy's start time (clock ticks since boot), so that a reused pid is never signalled.
    pub start: u64,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndRecord {
    /// Why.
    pub reason: EndReason,
    /// The main command's exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed the main command, when one did.
    pub signal: Option<i32>,
    /// The end of the sandbox's log (the main command's output): its totals and checksum, for a reader of a
    /// copy of the log kept elsewhere (a Pod's container log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<ExecEnd>,
}

/// File name of the [`EndRecord`] in the sandbox's state directory.
pub const END_RECORD_FILE: &str = "exit.json";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What each message looks like on the wire. An engine must read every one of these from agents of
    /// [`MIN_VERSION`] on: a change here needs a new [`VERSION`] and an engine that still reads the old shape.
    #[test]
    fn wire_format_is_pinned() {
        let requests = [
            (Request::Ping, json!({"op": "ping"})),
            (
                Request::Attach { exec: "ex-1".into(), from: [1, 2] },
                json!({"op": "attach", "exec": "ex-1", "from": [1, 2]}),
            ),
            (Request::Ack { pos: [3, 4] }, json!({"op": "ack", "pos": [3, 4]})),
            (Request::Signal { exec: String::new(), signal: 9 }, json!({"op": "signal", "exec": "", "signal": 9})),
            (Request::Resize { rows: 1, cols: 2 }, json!({"op": "resize", "rows": 1, "cols": 2})),
            (Request::Stdin { exec: "e".into(), offset: 5 }, json!({"op": "stdin", "exec": "e", "offset": 5})),
            (Request::StdinData { len: 6 }, json!({"op": "stdin_data", "len": 6})),
            (Request::ReadFile { path: "/a".into() }, json!({"op": "read_file", "path": "/a"})),
            (
                Request::WriteFile { path: "/b".into(), len: 7, mode: 0o644 },
                json!({"op": "write_file", "path": "/b", "len": 7, "mode": 420}),
            ),
            (Request::Stop { grace_ms: 8 }, json!({"op": "stop", "grace_ms": 8})),
            (Request::Detach, json!({"op": "detach"})),
            (Request::Hold { grace_ms: 9 }, json!({"op": "hold", "grace_ms": 9})),
            (Request::Inline, json!({"op": "inline"})),
            (Request::SeekTail { lines: 10 }, json!({"op": "seek_tail", "lines": 10})),
            (Request::SeekSince { ms: 11 }, json!({"op": "seek_since", "ms": 11})),
            (
                Request::Exec(ExecSpec { id: Some("x".into()), ..ExecSpec::new(["true"]) }),
                json!({"op": "exec", "id": "x", "argv": ["true"], "env": [], "cwd": null, "timeout_ms": null,
                    "stdin": false, "tty": null, "merged": false, "on_disconnect": {"policy": "keep"},
                    "retain_ms": null, "journal_cap": null}),
            ),
        ];
        for (req, want) in requests {
            assert_eq!(serde_json::to_value(&req).unwrap(), want);
        }
        let end = ExecEnd {
            ending: Ending::Exited { code: 3 },
            code: Some(3),
            bytes: [10, 0],
            crc32: [1, 0],
            ..ExecEnd::default()
        };
        let end_json = json!({"ending": {"kind": "exited", "code": 3}, "code": 3, "signal": null, "bytes": [10, 0],
            "crc32": [1, 0], "usage": {"wall_ms": 0, "cpu_user_us": 0, "cpu_sys_us": 0, "peak_memory_bytes": 0}});
        let progress = Progress { written: [10, 0], end: Some(end), ring: 1 << 20, ..Progress::default() };
        assert_eq!(
            serde_json::to_value(Response::Progress(progress)).unwrap(),
            json!({"op": "progress", "written": [10, 0], "head": 0, "dropped_to": [0, 0], "lost": [[], []],
                "end": end_json, "ring": 1 << 20})
        );
        // An agent from before rings sends none: its journals are not rings.
        let old: Response = serde_json::from_value(json!({"op": "progress", "written": [10, 0], "head": 0,
            "dropped_to": [0, 0], "lost": [[], []], "end": null}))
        .unwrap();
        assert!(matches!(&old, Response::Progress(p) if p.ring == 0 && p.written == [10, 0]), "{old:?}");
        let inline = [
            (
                Response::Output { stream: OutputStream::Stderr, offset: 1, len: 2 },
                json!({"op": "output", "stream": "stderr", "offset": 1, "len": 2}),
            ),
            (
                Response::Gap { stream: OutputStream::Stdout, from: 4, to: 5 },
                json!({"op": "gap", "stream": "stdout", "from": 4, "to": 5}),
            ),
            (Response::Seeked { pos: [6, 7] }, json!({"op": "seeked", "pos": [6, 7]})),
            (Response::FileData { len: 8 }, json!({"op": "file_data", "len": 8})),
            (Response::FileChunk { len: 9 }, json!({"op": "file_chunk", "len": 9})),
            (
                Response::Stopped(EndRecord { reason: EndReason::Stopped, code: None, signal: Some(9), log: None }),
                json!({"op": "stopped", "reason": "stopped", "code": null, "signal": 9}),
            ),
        ];
        for (resp, want) in inline {
            assert_eq!(serde_json::to_value(&resp).unwrap(), want);
        }
        let mut ended = serde_json::to_value(Response::Ended(ExecEnd::default())).unwrap();
        assert_eq!(ended.as_object_mut().unwrap().remove("op"), Some(json!("ended")));
        assert_eq!(ended, serde_json::to_value(ExecEnd::default()).unwrap());
        assert_eq!(
            serde_json::to_value(Response::Error { kind: ErrorKind::ExecNotFound, message: "m".into() }).unwrap(),
            json!({"op": "error", "kind": "exec_not_found", "message": "m"})
        );
    }

    /// A version-1 agent's exec info (with the journal path it used to send) still reads.
    #[test]
    fn version_1_exec_info_reads() {
        let v1 = json!({"op": "exec", "id": "ex-1", "argv": ["sh"], "pid": 5, "started_at_ms": 1, "tty": false,
            "merged": false, "stdin_open": false, "stdin_acked": 0, "written": [0, 0], "attached": 1, "end": null,
            "expired": false, "journal": "execs/ex-1"});
        let Response::Exec(info) = serde_json::from_value(v1).unwrap() else { panic!("not an exec") };
        assert_eq!((info.id.as_str(), info.pid, info.attached), ("ex-1", 5, 1));
    }
}
