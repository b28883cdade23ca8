//! Execs: what to run, the events of its output, how it ended, and what it is.

use crate::{check_argv, check_env, Invalid, MAX_JOURNAL_CAP, MAX_LIFETIME};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How an exec's output is captured.
///
/// ```
/// use hangar_types::Output;
/// assert_eq!(Output::default(), Output::Split);
/// assert!(Output::Pty { rows: 24, cols: 80 }.is_pty());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// stdout and stderr on pipes of their own.
    #[default]
    Split,
    /// stdout and stderr share one pipe, so their interleaving is kept exactly (all output is on stdout).
    Merged,
    /// A pseudo-terminal of this size: programs see a TTY, its output is on stdout, stderr is empty.
    Pty {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

impl Output {
    /// Whether the exec runs under a terminal.
    pub fn is_pty(self) -> bool {
        matches!(self, Output::Pty { .. })
    }
}

/// What happens to a running exec when no client is attached to it any more.
///
/// ```
/// use hangar_types::OnDisconnect;
/// assert_eq!(OnDisconnect::default(), OnDisconnect::Keep);
/// ```
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

/// One command to run in a sandbox. The same value travels from the SDK call through the server and the
/// engine to the agent; [`ExecSpec::validate`] is its one set of rules.
///
/// ```
/// use hangar_types::{ExecSpec, Output};
/// use std::time::Duration;
/// let spec = ExecSpec {
///     timeout: Some(Duration::from_secs(30)),
///     output: Output::Merged,
///     ..ExecSpec::new(["python3", "train.py"])
/// };
/// assert!(spec.validate().is_ok());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "wire::ExecRequest", try_from = "wire::ExecRequest")]
pub struct ExecSpec {
    /// Exec id chosen by the caller: starting the same id again finds the running (or finished) exec
    /// instead of running the command twice. The agent picks one when `None`.
    pub id: Option<String>,
    /// Program and arguments (no shell); `argv[0]` is looked up on the sandbox's `PATH`.
    pub argv: Vec<String>,
    /// Environment variables added to the sandbox's.
    pub env: Vec<(String, String)>,
    /// Working directory; the sandbox's when `None`.
    pub cwd: Option<String>,
    /// Kill the whole process tree after this long.
    pub timeout: Option<Duration>,
    /// stdin is a pipe that clients write (resumable by offset); otherwise `/dev/null` (or the terminal).
    pub stdin: bool,
    /// How output is captured.
    pub output: Output,
    /// What happens when no client is attached.
    pub on_disconnect: OnDisconnect,
    /// How long the journal is kept after the exec ended and its last reader left.
    pub retain: Option<Duration>,
    /// Bytes retained per stream: beyond it the middle is dropped (head and tail kept) while no reader is
    /// attached, and the command is slowed while one is.
    pub journal_cap: Option<u64>,
}

impl ExecSpec {
    /// A spec running `argv`, everything else at its default.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self { argv: argv.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// Checks every rule of an exec request, naming the field that breaks one.
    ///
    /// ```
    /// use hangar_types::ExecSpec;
    /// use std::time::Duration;
    /// let spec = ExecSpec { timeout: Some(Duration::ZERO), ..ExecSpec::new(["true"]) };
    /// assert_eq!(spec.validate().unwrap_err().to_string(), "timeout: must be positive");
    /// ```
    pub fn validate(&self) -> Result<(), Invalid> {
        check_argv("argv", &self.argv)?;
        check_env(&self.env)?;
        if let Some(id) = self.id.as_deref().filter(|id| !valid_exec_id(id)) {
            return Err(Invalid::new("exec_id", format!("{id:?}: use 1-128 of [A-Za-z0-9._-], not starting with '.'")));
        }
        if self.id.as_deref() == Some(crate::MAIN_EXEC) {
            return Err(Invalid::new("exec_id", "\"main\" is the sandbox's main command (attach to it for its logs)"));
        }
        if self.cwd.as_deref().is_some_and(|c| c.contains('\0')) {
            return Err(Invalid::new("cwd", "contains a NUL byte"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Invalid::new("timeout", "must be positive"));
        }
        if let Output::Pty { rows, cols } = self.output {
            if rows == 0 || cols == 0 {
                return Err(Invalid::new("tty_size", "rows and columns must be between 1 and 65535"));
            }
        }
        if self.retain.is_some_and(|r| r > MAX_LIFETIME) {
            return Err(Invalid::new("retain", format!("exceeds {} days", MAX_LIFETIME.as_secs() / 86400)));
        }
        if self.journal_cap.is_some_and(|c| c > MAX_JOURNAL_CAP) {
            return Err(Invalid::new("journal_cap", format!("exceeds {MAX_JOURNAL_CAP} bytes")));
        }
        Ok(())
    }
}

/// Whether `id` may name an exec: 1-128 of `[A-Za-z0-9._-]`, not starting with `.` (it names the exec's
/// journal directory).
///
/// ```
/// assert!(hangar_types::valid_exec_id("train-42"));
/// assert!(!hangar_types::valid_exec_id("../etc"));
/// ```
pub fn valid_exec_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// Both streams, in the order of `[stdout, stderr]` pairs.
    pub const BOTH: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

    /// The stream's index in `[stdout, stderr]` pairs.
    ///
    /// ```
    /// use hangar_types::OutputStream;
    /// assert_eq!(OutputStream::Stderr.index(), 1);
    /// assert_eq!(OutputStream::BOTH[1], OutputStream::Stderr);
    /// ```
    pub fn index(self) -> usize {
        self as usize
    }

    /// The stream's name: `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// One event of an exec's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes written by the process, in order per stream; `offset` is the stream position of `data[0]`.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// Byte offset within that stream.
        offset: u64,
        /// The bytes (shared, so handing a chunk on to a callback or the network never copies it).
        data: bytes::Bytes,
    },
    /// Bytes `from..to` of a stream were dropped by the journal cap while no reader was attached, or after
    /// another reader had received them (an exec's journal keeps only the head and the last 64 MiB of what
    /// was delivered), or never journaled because the host's disk stayed full.
    Gap {
        /// Which stream.
        stream: OutputStream,
        /// First lost offset.
        from: u64,
        /// First offset after the lost range.
        to: u64,
    },
    /// The exec ended and every byte before has been delivered; always the last event.
    Exit(ExecEnd),
}

/// One step of following an exec with its output going to descriptors rather than handed out (the
/// journal's `Reader::next_sent`, the engine's `ExecStream::next_sent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A gap or the end, as it would be handed out.
    Event(ExecEvent),
    /// Bytes `offset..offset + len` of `stream` went to that stream's descriptor.
    Sent {
        /// Which stream.
        stream: OutputStream,
        /// Byte offset within that stream.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
}

/// Why a command never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFailureKind {
    /// The program does not exist on the sandbox's `PATH` (or at the given path).
    NotFound,
    /// The program (or a directory on its path) may not be executed by the exec's user.
    PermissionDenied,
    /// The file is not something the kernel can execute (a bad interpreter line, a foreign binary).
    NotExecutable,
    /// The working directory does not exist or is not a directory.
    BadCwd,
    /// The sandbox had no room for the process: its process limit (pids), memory, or descriptors.
    ResourceLimit,
    /// Anything else.
    #[default]
    Other,
}

impl StartFailureKind {
    const NAMES: [(StartFailureKind, &'static str); 6] = [
        (Self::NotFound, "not_found"),
        (Self::PermissionDenied, "permission_denied"),
        (Self::NotExecutable, "not_executable"),
        (Self::BadCwd, "bad_cwd"),
        (Self::ResourceLimit, "resource_limit"),
        (Self::Other, "other"),
    ];

    /// The kind's name, as every API spells it (`not_found`, `resource_limit`, ...).
    ///
    /// ```
    /// use hangar_types::StartFailureKind;
    /// assert_eq!(StartFailureKind::parse(StartFailureKind::BadCwd.as_str()), Some(StartFailureKind::BadCwd));
    /// ```
    pub fn as_str(self) -> &'static str {
        Self::NAMES.iter().find(|(k, _)| *k == self).map_or("other", |(_, n)| n)
    }

    /// Every kind.
    pub const ALL: [StartFailureKind; 6] =
        [Self::NotFound, Self::PermissionDenied, Self::NotExecutable, Self::BadCwd, Self::ResourceLimit, Self::Other];

    /// The kind a name from [`StartFailureKind::as_str`] stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }

    /// Whether the program itself is at fault (missing or not runnable), rather than the sandbox's room.
    pub fn is_command_problem(self) -> bool {
        matches!(self, Self::NotFound | Self::PermissionDenied | Self::NotExecutable | Self::BadCwd)
    }
}

/// A command that never started: why, as a kind to branch on and a message naming the program.
///
/// ```
/// use hangar_types::{StartFailure, StartFailureKind};
/// let f = StartFailure::new(StartFailureKind::NotFound, "command not found: pyhton3");
/// assert!(f.kind.is_command_problem());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "wire::StartFailure", from = "wire::StartFailure")]
pub struct StartFailure {
    /// What kind of failure.
    pub kind: StartFailureKind,
    /// What happened, naming the program.
    pub message: String,
}

impl StartFailure {
    /// A failure of this kind.
    pub fn new(kind: StartFailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
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
    FailedToStart(StartFailure),
    /// The sandbox ended (or its agent died) before the exec did.
    SandboxGone,
}

impl Default for Ending {
    fn default() -> Self {
        Ending::Exited { code: 0 }
    }
}

impl std::fmt::Display for Ending {
    /// The ending as one word, as the CLI prints it: `exited:3`, `signal:9`, `timed_out`, ...
    ///
    /// ```
    /// use hangar_types::Ending;
    /// assert_eq!(Ending::Exited { code: 3 }.to_string(), "exited:3");
    /// assert_eq!(Ending::OomKilled.to_string(), "oom_killed");
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited { code } => write!(f, "exited:{code}"),
            Ending::Signaled { signal } => write!(f, "signal:{signal}"),
            Ending::TimedOut => f.write_str("timed_out"),
            Ending::Cancelled => f.write_str("cancelled"),
            Ending::OomKilled => f.write_str("oom_killed"),
            Ending::FailedToStart(_) => f.write_str("failed_to_start"),
            Ending::SandboxGone => f.write_str("sandbox_gone"),
        }
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
    /// Peak memory of its processes (including page cache), bytes, above what earlier execs left charged to its
    /// cgroup (cgroups are reused).
    pub peak_memory_bytes: u64,
}

/// The signal a killed exec reports when the kernel gave none (SIGKILL).
const SIGKILL: i32 = 9;

/// An exec's end: why, its wait status, and totals the reader checks what it received against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
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

impl ExecEnd {
    /// The end of an exec whose sandbox went away after it had written `bytes`: what was journaled is
    /// still delivered, and its checksums are unknown.
    pub fn sandbox_gone(bytes: [u64; 2]) -> Self {
        Self { ending: Ending::SandboxGone, bytes, ..Self::default() }
    }

    /// The end of a command that never started.
    pub fn failed_to_start(failure: StartFailure) -> Self {
        Self { ending: Ending::FailedToStart(failure), ..Self::default() }
    }

    /// The exit status as Python's `subprocess` reports it: the code when it exited, `-N` when signal N
    /// killed it (a timeout, a cancel and an OOM kill are SIGKILLs), 127 (the shell's "command not found")
    /// when it never started.
    ///
    /// ```
    /// use hangar_types::{Ending, ExecEnd};
    /// let end = ExecEnd { ending: Ending::TimedOut, signal: Some(9), ..ExecEnd::default() };
    /// assert_eq!(end.returncode(), -9);
    /// ```
    pub fn returncode(&self) -> i32 {
        match &self.ending {
            Ending::Exited { code } => *code,
            Ending::FailedToStart(_) => 127,
            _ => -self.signal.unwrap_or(SIGKILL),
        }
    }

    /// The exit status as a shell reports it (`$?`): the code, or 128+N for signal N.
    ///
    /// ```
    /// use hangar_types::{Ending, ExecEnd};
    /// assert_eq!(ExecEnd { ending: Ending::Signaled { signal: 15 }, signal: Some(15), ..ExecEnd::default() }.shell_code(), 143);
    /// ```
    pub fn shell_code(&self) -> u8 {
        match self.returncode() {
            rc if rc < 0 => (128 - rc).min(255) as u8,
            rc => rc.min(255) as u8,
        }
    }
}

/// What an exec is and how far it has come.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
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
}

/// The JSON shapes of the agent protocol's version 1, which every later version reads too: sandboxes outlive
/// engine upgrades, so an engine must understand what an agent started before the upgrade sends.
mod wire {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct WinSize {
        rows: u16,
        cols: u16,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct ExecRequest {
        #[serde(default)]
        id: String,
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        stdin: bool,
        #[serde(default)]
        tty: Option<WinSize>,
        #[serde(default)]
        merged: bool,
        #[serde(default)]
        on_disconnect: OnDisconnect,
        #[serde(default)]
        retain_ms: Option<u64>,
        #[serde(default)]
        journal_cap: Option<u64>,
    }

    impl From<ExecSpec> for ExecRequest {
        fn from(s: ExecSpec) -> Self {
            let (tty, merged) = match s.output {
                Output::Split => (None, false),
                Output::Merged => (None, true),
                Output::Pty { rows, cols } => (Some(WinSize { rows, cols }), false),
            };
            ExecRequest {
                id: s.id.unwrap_or_default(),
                argv: s.argv,
                env: s.env,
                cwd: s.cwd,
                // Sub-millisecond timeouts round up: a positive timeout never becomes "none".
                timeout_ms: s.timeout.map(|t| t.as_millis().max(1) as u64),
                stdin: s.stdin,
                tty,
                merged,
                on_disconnect: s.on_disconnect,
                retain_ms: s.retain.map(|d| d.as_millis() as u64),
                journal_cap: s.journal_cap,
            }
        }
    }

    impl TryFrom<ExecRequest> for ExecSpec {
        type Error = String;
        fn try_from(r: ExecRequest) -> Result<Self, String> {
            let output = match (r.tty, r.merged) {
                (Some(WinSize { rows, cols }), false) => Output::Pty { rows, cols },
                (Some(_), true) => return Err("an exec cannot be both a terminal and merged".into()),
                (None, true) => Output::Merged,
                (None, false) => Output::Split,
            };
            Ok(ExecSpec {
                id: (!r.id.is_empty()).then_some(r.id),
                argv: r.argv,
                env: r.env,
                cwd: r.cwd,
                timeout: r.timeout_ms.map(Duration::from_millis),
                stdin: r.stdin,
                output,
                on_disconnect: r.on_disconnect,
                retain: r.retain_ms.map(Duration::from_millis),
                journal_cap: r.journal_cap,
            })
        }
    }

    /// Version 1 said only whether the program was missing (`missing`); the kind came later.
    #[derive(Serialize, Deserialize)]
    pub(super) struct StartFailure {
        reason: String,
        #[serde(default)]
        missing: bool,
        #[serde(default)]
        failure: Option<StartFailureKind>,
    }

    impl From<super::StartFailure> for StartFailure {
        fn from(f: super::StartFailure) -> Self {
            StartFailure { reason: f.message, missing: f.kind.is_command_problem(), failure: Some(f.kind) }
        }
    }

    impl From<StartFailure> for super::StartFailure {
        fn from(f: StartFailure) -> Self {
            let kind =
                f.failure.unwrap_or(if f.missing { StartFailureKind::NotFound } else { StartFailureKind::Other });
            super::StartFailure { kind, message: f.reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_spec_round_trips_through_json_for_every_output_mode() {
        for output in [Output::Split, Output::Merged, Output::Pty { rows: 40, cols: 100 }] {
            let spec = ExecSpec {
                id: Some("ex-1".into()),
                env: vec![("A".into(), "1".into())],
                cwd: Some("/work".into()),
                timeout: Some(Duration::from_millis(1500)),
                stdin: true,
                output,
                on_disconnect: OnDisconnect::Kill { grace_ms: 5 },
                retain: Some(Duration::from_secs(60)),
                journal_cap: Some(1 << 20),
                ..ExecSpec::new(["python3", "-c", "print(1)"])
            };
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<ExecSpec>(&json).unwrap(), spec, "{json}");
        }
    }

    #[test]
    fn exec_spec_json_is_protocol_version_1() {
        let spec = ExecSpec {
            timeout: Some(Duration::from_micros(10)),
            output: Output::Pty { rows: 2, cols: 3 },
            ..ExecSpec::new(["sh"])
        };
        let v: serde_json::Value = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "", "argv": ["sh"], "env": [], "cwd": null, "timeout_ms": 1, "stdin": false,
                "tty": {"rows": 2, "cols": 3}, "merged": false, "on_disconnect": {"policy": "keep"},
                "retain_ms": null, "journal_cap": null})
        );
        let both = r#"{"argv":["sh"],"tty":{"rows":1,"cols":1},"merged":true}"#;
        assert!(serde_json::from_str::<ExecSpec>(both).is_err());
    }

    #[test]
    fn start_failures_of_version_1_agents_keep_their_meaning() {
        let old = r#"{"kind":"failed_to_start","reason":"command not found: x","missing":true}"#;
        let Ending::FailedToStart(f) = serde_json::from_str::<Ending>(old).unwrap() else { panic!() };
        assert_eq!(f, StartFailure::new(StartFailureKind::NotFound, "command not found: x"));
        let old = r#"{"kind":"failed_to_start","reason":"pids limit"}"#;
        let Ending::FailedToStart(f) = serde_json::from_str::<Ending>(old).unwrap() else { panic!() };
        assert_eq!(f.kind, StartFailureKind::Other);
        let new = Ending::FailedToStart(StartFailure::new(StartFailureKind::BadCwd, "cwd /nope: not found"));
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<Ending>(&json).unwrap(), new);
        assert!(json.contains(r#""missing":true"#), "older engines still see a command problem: {json}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(ExecSpec, &str)> = vec![
            (ExecSpec::new([""]), "argv: argv[0] is empty"),
            (ExecSpec::new(["a\0b"]), "argv: argument \"a\\0b\" contains a NUL byte"),
            (
                ExecSpec { env: vec![("A=B".into(), String::new())], ..ExecSpec::new(["x"]) },
                "env: \"A=B\" is not a valid variable",
            ),
            (
                ExecSpec { output: Output::Pty { rows: 0, cols: 80 }, ..ExecSpec::new(["x"]) },
                "tty_size: rows and columns must be between 1 and 65535",
            ),
            (
                ExecSpec { journal_cap: Some(MAX_JOURNAL_CAP + 1), ..ExecSpec::new(["x"]) },
                "journal_cap: exceeds 68719476736 bytes",
            ),
            (ExecSpec { retain: Some(MAX_LIFETIME * 2), ..ExecSpec::new(["x"]) }, "retain: exceeds 30 days"),
            (
                ExecSpec { id: Some("../x".into()), ..ExecSpec::new(["x"]) },
                "exec_id: \"../x\": use 1-128 of [A-Za-z0-9._-], not starting with '.'",
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.validate().unwrap_err().to_string(), want);
        }
        assert!(ExecSpec::new(["true"]).validate().is_ok());
    }

    #[test]
    fn return_codes() {
        let end = |ending, signal| ExecEnd { ending, signal, ..ExecEnd::default() };
        assert_eq!(end(Ending::Exited { code: 3 }, None).returncode(), 3);
        assert_eq!(end(Ending::Signaled { signal: 15 }, Some(15)).returncode(), -15);
        assert_eq!(end(Ending::Cancelled, None).returncode(), -9);
        assert_eq!(ExecEnd::failed_to_start(StartFailure::new(StartFailureKind::NotFound, "x")).returncode(), 127);
        assert_eq!(end(Ending::OomKilled, Some(9)).shell_code(), 137);
        assert_eq!(end(Ending::Exited { code: 300 }, None).shell_code(), 255);
    }
}
