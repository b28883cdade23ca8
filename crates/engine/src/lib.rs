//! The Hangar engine: sandboxes and execs as objects.
//!
//! It turns a [`SandboxConfig`] into a running sandbox (image → layout, cgroup, agent spawned into fresh
//! namespaces), keeps every sandbox's record in an embedded SQLite store so that any process using the
//! same state directory sees the same sandboxes, runs execs through the sandbox's agent and streams their
//! output as [`ExecEvent`]s read from the agent's per-exec journal (resumable by offset), and stops sandboxes with a grace period,
//! leaving no process, mount, cgroup or directory behind.
//!
//! Both the embedded SDK and the server use this one engine. It is not a user API: the `hangar` crate is.

mod error;
mod exec;
mod files;
mod sandbox;
mod store;

pub use error::{Error, FileErrorKind, Result};
pub use exec::{
    Ending, ExecControl, ExecEnd, ExecEvent, ExecInfo, ExecSpec, ExecStream, OnDisconnect, OutputStream, StdinWriter,
    Usage,
};
pub use hangar_agent::{DEFAULT_CAP as DEFAULT_JOURNAL_CAP, DEFAULT_RETAIN as DEFAULT_EXEC_RETAIN};
pub use hangar_runtime::{DEFAULT_CAPABILITIES, DENIED_SYSCALLS};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Default grace between SIGTERM and SIGKILL when stopping a sandbox.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Default maximum lifetime of a sandbox.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Default limit on processes and threads in a sandbox (a fork bomb stops here).
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// Lifecycle of a sandbox: `creating → running → completed | failed | terminated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Its image is being pulled (see [`SandboxInfo::progress`]).
    Pulling,
    /// Being built.
    Creating,
    /// Its main command is running; execs are accepted.
    Running,
    /// Its main command exited with code 0.
    Completed,
    /// Its main command exited non-zero or was killed, or the sandbox could not start.
    Failed,
    /// It was stopped, or its lifetime ran out.
    Terminated,
}

impl SandboxState {
    /// The state's name, as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pulling => "pulling",
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Terminated => "terminated",
        }
    }
    /// The state named `s` (as printed by [`SandboxState::as_str`]); unknown names read as `failed`.
    pub fn parse(s: &str) -> Self {
        match s {
            "pulling" => Self::Pulling,
            "creating" => Self::Creating,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "terminated" => Self::Terminated,
            _ => Self::Failed,
        }
    }
    /// Whether the sandbox has ended for good.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pulling | Self::Creating | Self::Running)
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What to create.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Image reference.
    pub image: String,
    /// Main command; the sandbox ends when it does. Empty means the image's default (entrypoint + cmd;
    /// `sleep infinity` for the built-in image).
    pub command: Vec<String>,
    /// Environment for every process in the sandbox, over the image's.
    pub env: Vec<(String, String)>,
    /// Free-form labels.
    pub tags: BTreeMap<String, String>,
    /// Working directory (the image's when `None`).
    pub workdir: Option<String>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Process limit ([`DEFAULT_PIDS_LIMIT`] when `None`).
    pub pids: Option<u64>,
    /// What the writable layers may keep on disk: at most, and by default, the engine's
    /// [`EngineConfig::disk_budget_bytes`] (an error when the engine has none).
    pub disk_bytes: Option<u64>,
    /// The sandbox is stopped after this long.
    pub max_lifetime: Duration,
    /// Grace used when the lifetime ends.
    pub stop_grace: Duration,
    /// Owner of the sandbox (the server's tenant; empty for local use).
    pub tenant: String,
    /// Client-chosen id making creation idempotent per tenant: a retry returns the first sandbox.
    pub request_id: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: hangar_images::BUILTIN.into(),
            command: vec![],
            env: vec![],
            tags: BTreeMap::new(),
            workdir: None,
            cpus: None,
            memory_bytes: None,
            pids: None,
            disk_bytes: None,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            stop_grace: DEFAULT_STOP_GRACE,
            tenant: String::new(),
            request_id: None,
        }
    }
}

/// A sandbox's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// Sandbox id (`sb-` and 16 hex digits).
    pub id: String,
    /// Current state.
    pub state: SandboxState,
    /// Image it was made from.
    pub image: String,
    /// Main command.
    pub command: Vec<String>,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// Maximum lifetime in milliseconds.
    pub max_lifetime_ms: u64,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// End time, Unix milliseconds.
    pub ended_at_ms: Option<u64>,
    /// Exit code of the main command, when it exited.
    pub exit_code: Option<i32>,
    /// Signal that killed the main command.
    pub exit_signal: Option<i32>,
    /// Why it ended: `exited`, `stopped`, `lifetime_exceeded`, `agent_died`, `start_failed`.
    pub end_reason: Option<String>,
    /// Why it failed to start.
    pub error: Option<String>,
    /// Owner (the server's tenant; empty for local use).
    pub tenant: String,
    /// While pulling: how far the pull has come, e.g. `pulled 12.5 of 40.1 MB`.
    pub progress: Option<String>,
}

/// How a sandbox ended (internal, written once to the store).
pub(crate) struct SandboxEnding {
    pub state: SandboxState,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: &'static str,
    pub error: Option<String>,
}

/// Where the engine keeps its state and finds the agent.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// State directory: the store, images, per-sandbox directories.
    pub state_dir: PathBuf,
    /// The `hangar-agent` binary.
    pub agent_bin: PathBuf,
    /// Largest file a read or write moves, either way ([`DEFAULT_MAX_FILE_BYTES`] unless set). Transfers are
    /// streamed, so this bounds time and disk, not memory.
    pub max_file_bytes: u64,
    /// What each sandbox may keep on disk (its writable layers and exec journals), in bytes, enforced by btrfs
    /// quota groups on a volume Hangar makes under the state directory (see `hangar_runtime::disk`); `None`
    /// for no budget, the default for now.
    pub disk_budget_bytes: Option<u64>,
}

/// Parses a size such as `20G`, `512M`, `4096K` or a number of bytes (at least 1 MiB).
pub fn parse_size(size: &str) -> Result<u64> {
    let s = size.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(Error::InvalidArgument(format!("size {size:?}: use a size like 20G or 512M"))),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&b| b >= 1 << 20)
        .ok_or_else(|| Error::InvalidArgument(format!("size {size:?}: a size of at least 1M")))
}

impl EngineConfig {
    /// The defaults: `$HANGAR_STATE_DIR` or `/var/lib/hangar`, and `$HANGAR_AGENT_BIN` or a `hangar-agent`
    /// found next to the current executable (or its parent directory, for test and example binaries) or on
    /// `PATH`; `$HANGAR_MAX_FILE_BYTES` or [`DEFAULT_MAX_FILE_BYTES`]; a disk budget per sandbox when
    /// `$HANGAR_DISK_BUDGET` is set (`20G`, say; needs `mkfs.btrfs`).
    pub fn from_env() -> Result<Self> {
        let state_dir =
            std::env::var_os("HANGAR_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib/hangar"));
        let max_file_bytes = match std::env::var("HANGAR_MAX_FILE_BYTES") {
            Ok(v) => v.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!("HANGAR_MAX_FILE_BYTES: {v:?} is not a number of bytes"))
            })?,
            Err(_) => DEFAULT_MAX_FILE_BYTES,
        };
        let disk_budget_bytes = match std::env::var("HANGAR_DISK_BUDGET") {
            Ok(v) if !v.is_empty() && v != "off" => Some(parse_size(&v)?),
            _ => None,
        };
        Ok(Self { state_dir, agent_bin: find_agent()?, max_file_bytes, disk_budget_bytes })
    }

    /// A configuration with this state directory and agent binary, and the defaults for the rest.
    pub fn new(state_dir: impl Into<PathBuf>, agent_bin: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            agent_bin: agent_bin.into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            disk_budget_bytes: None,
        }
    }
}

fn find_agent() -> Result<PathBuf> {
    const NAME: &str = "hangar-agent";
    if let Some(p) = std::env::var_os("HANGAR_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(NAME));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(NAME)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "cannot find the {NAME} binary (next to this program or on PATH); build it with `cargo build -p hangar-cli` or set HANGAR_AGENT_BIN"
        ))
    })
}

pub use files::{FileDownload, DEFAULT_MAX_FILE_BYTES};
pub use sandbox::Engine;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh random identifier with the given prefix, e.g. `sb-1f2e3d4c5b6a7988`.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b = (now_ms() ^ std::process::id() as u64).to_le_bytes();
    }
    format!("{prefix}-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}
