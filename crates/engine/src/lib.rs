//! The Hangar engine: sandboxes and execs as objects.
//!
//! It turns a [`SandboxConfig`] into a running sandbox (image → layout, cgroup, agent spawned into fresh
//! namespaces), keeps every sandbox's record in an embedded SQLite store so that any process using the
//! same state directory sees the same sandboxes, runs execs through the sandbox's agent and streams their
//! output as [`ExecEvent`]s read from the agent's per-exec journal (resumable by offset), and stops sandboxes with a grace period,
//! leaving no process, mount, cgroup or directory behind.
//!
//! Both the embedded SDK and the server use this one engine. It is not a user API: the `hangar` crate is.

mod backend;
mod error;
mod exec;
mod files;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod local;

pub use error::{Error, Result};
pub use exec::{ExecControl, ExecStream, StdinWriter};
pub use hangar_runtime::cgroups::migrations_are_cheap;
pub use hangar_runtime::net::Subnet;
pub use hangar_runtime::{DEFAULT_CAPABILITIES, DENIED_SYSCALLS};
pub(crate) use hangar_types::now_ms;
pub use hangar_types::{
    Ending, ExecEnd, ExecEvent, ExecInfo, ExecSpec, FileErrorKind, Invalid, NetTarget, NetworkMode, NetworkPolicy,
    OnDisconnect, Output, OutputStream, Reason, SandboxConfig, SandboxInfo, SandboxState, StartFailure,
    StartFailureKind, Usage, BUILTIN_IMAGE, DEFAULT_EXEC_RETAIN, DEFAULT_JOURNAL_CAP, DEFAULT_MAX_LIFETIME,
    DEFAULT_PIDS_LIMIT, DEFAULT_STOP_GRACE,
};
pub use local::network::{parse_resolvers, NetworkConfig};

use std::path::PathBuf;
use std::time::Duration;

/// How a sandbox ended (internal, written once to the store).
pub(crate) struct SandboxEnding {
    pub state: SandboxState,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: &'static str,
    pub error: Option<String>,
}

impl SandboxEnding {
    /// The ending an agent's end record states; without one, the agent died.
    pub(crate) fn of(end: Option<&hangar_agent_protocol::EndRecord>) -> Self {
        use hangar_agent_protocol::EndReason;
        let (state, reason) = match end.map(|e| (e.reason, e.code)) {
            Some((EndReason::Exited, Some(0))) => (SandboxState::Completed, "exited"),
            Some((EndReason::Exited, _)) => (SandboxState::Failed, "exited"),
            Some((EndReason::Stopped, _)) => (SandboxState::Terminated, "stopped"),
            Some((EndReason::LifetimeExceeded, _)) => (SandboxState::Terminated, "lifetime_exceeded"),
            None => (SandboxState::Terminated, "agent_died"),
        };
        Self { state, code: end.and_then(|e| e.code), signal: end.and_then(|e| e.signal), reason, error: None }
    }
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
    /// How long the record of an ended sandbox is kept (for `ls`, its exit code, a client polling for its
    /// end), [`DEFAULT_ENDED_RETENTION`] unless set; `None` keeps records until they are removed.
    pub ended_retention: Option<Duration>,
    /// How sandboxes get networks (their default policy, addresses, resolvers).
    pub network: NetworkConfig,
    /// Have agents send exec output on the connection instead of reading their journal files here: what an
    /// engine must do with agents it cannot share files with (Pods), and, on the local backend, a way to test
    /// that path (`$HANGAR_INLINE_JOURNALS=1`); slower than the files. Off unless set.
    pub inline_journals: bool,
    /// Set the host's cgroup2 `favordynmods` option when the engine opens, so that on a pure cgroup v2 host
    /// moving a sandbox's agent and exec processes into their cgroups takes ~0.1 ms instead of an RCU grace
    /// period (5–35 ms, on every start after a quiet moment; on v1 they move themselves cheaply anyway, see
    /// `hangar_runtime::cgroups::Cgroups::joins_are_cheap`) — at the price of slightly dearer forks and exits
    /// host-wide, until the host reboots (see `hangar_runtime::cgroups::migrations_are_cheap`).
    /// `$HANGAR_CGROUP_FAVORDYNMODS=1`; off unless set: it changes the host, which is the operator's call.
    pub favor_dynmods: bool,
    /// Whether agents keep a spare exec helper ready (from their sandbox's first exec on, whenever execs pause);
    /// `None` (the default): only where a process's move into a cgroup is slow
    /// (`hangar_runtime::cgroups::Cgroups::joins_are_cheap`: v2 without `favordynmods`), since a spare only
    /// takes a move off an exec's path and costs a process (~200 KiB). `$HANGAR_SPARE_HELPERS=1` or `0`
    /// decides for every host.
    pub spare_helpers: Option<bool>,
    /// Bytes all exec journals of one sandbox may hold together; past it, ended execs' journals nobody reads
    /// are expired early, oldest first. [`hangar_types::DEFAULT_JOURNAL_BUDGET`] (4 GiB) unless set
    /// (`$HANGAR_JOURNAL_BUDGET`, a size such as `1G`).
    pub journal_budget: Option<u64>,
}

/// Default for [`EngineConfig::ended_retention`].
pub const DEFAULT_ENDED_RETENTION: Duration = Duration::from_secs(24 * 3600);

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
    /// `$HANGAR_DISK_BUDGET` is set (`20G`, say; needs `mkfs.btrfs`); ended records kept for
    /// `$HANGAR_ENDED_RETENTION` seconds (`off`: until removed) or [`DEFAULT_ENDED_RETENTION`]; networks as
    /// [`NetworkConfig::from_env`] says; [`EngineConfig::favor_dynmods`] when `$HANGAR_CGROUP_FAVORDYNMODS=1`.
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
        let ended_retention = match std::env::var("HANGAR_ENDED_RETENTION") {
            Ok(v) if v == "off" => None,
            Ok(v) => Some(Duration::from_secs(v.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!("HANGAR_ENDED_RETENTION: {v:?} is not a number of seconds or off"))
            })?)),
            Err(_) => Some(DEFAULT_ENDED_RETENTION),
        };
        let network = NetworkConfig::from_env()?;
        let inline_journals = std::env::var("HANGAR_INLINE_JOURNALS").is_ok_and(|v| v == "1");
        let favor_dynmods = std::env::var("HANGAR_CGROUP_FAVORDYNMODS").is_ok_and(|v| v == "1");
        let journal_budget = std::env::var("HANGAR_JOURNAL_BUDGET").ok().map(|v| parse_size(&v)).transpose()?;
        let spare_helpers = match std::env::var("HANGAR_SPARE_HELPERS").as_deref() {
            Ok("1") => Some(true),
            Ok("0") => Some(false),
            Ok(v) => return Err(Error::InvalidArgument(format!("HANGAR_SPARE_HELPERS: {v:?} is neither 1 nor 0"))),
            Err(_) => None,
        };
        Ok(Self {
            state_dir,
            agent_bin: find_agent()?,
            max_file_bytes,
            disk_budget_bytes,
            ended_retention,
            network,
            inline_journals,
            favor_dynmods,
            spare_helpers,
            journal_budget,
        })
    }

    /// A configuration with this state directory and agent binary, and the defaults for the rest.
    pub fn new(state_dir: impl Into<PathBuf>, agent_bin: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            agent_bin: agent_bin.into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            disk_budget_bytes: None,
            ended_retention: Some(DEFAULT_ENDED_RETENTION),
            network: NetworkConfig::default(),
            inline_journals: false,
            favor_dynmods: false,
            spare_helpers: None,
            journal_budget: None,
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

pub use backend::Engine;
pub use files::{FileDownload, DEFAULT_MAX_FILE_BYTES};
#[cfg(feature = "kubernetes")]
pub use kubernetes::KubernetesConfig;

/// A fresh random identifier with the given prefix, e.g. `sb-1f2e3d4c5b6a7988`.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b = (now_ms() ^ std::process::id() as u64).to_le_bytes();
    }
    format!("{prefix}-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_unit_and_a_floor() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size(" 512m ").unwrap(), 512 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "12Q", "1K", "G", "99999999999T"] {
            assert!(matches!(parse_size(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn every_engine_error_has_a_reason() {
        let e = Error::File { id: "sb".into(), path: "/x".into(), kind: FileErrorKind::NoSpace, message: "m".into() };
        assert_eq!(e.reason(), Reason::File(FileErrorKind::NoSpace));
        assert_eq!(Error::Internal("x".into()).reason(), Reason::Internal);
        let e = Error::AgentVersion { id: "sb".into(), version: 9, min: 1, max: 2 };
        assert!(e.to_string().contains("protocol version 9"), "{e}");
    }
}
