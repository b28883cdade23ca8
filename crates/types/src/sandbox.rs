//! Sandboxes: what to create, its record, and its lifecycle.

use crate::NetworkPolicy;
use crate::{
    check_argv, check_env, Invalid, BUILTIN_IMAGE, DEFAULT_MAX_LIFETIME, DEFAULT_STOP_GRACE, MAX_CPUS, MAX_LIFETIME,
    MAX_MEMORY_BYTES, MAX_REQUEST_ID, MAX_STOP_GRACE, MIN_MEMORY_BYTES,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Lifecycle of a sandbox: `pulling → creating → running → completed | failed | terminated`.
///
/// ```
/// use hangar_types::SandboxState;
/// assert_eq!(SandboxState::parse("running"), Some(SandboxState::Running));
/// assert!(SandboxState::Terminated.is_final());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Every state, in lifecycle order.
    pub const ALL: [SandboxState; 6] = [
        SandboxState::Pulling,
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Completed,
        SandboxState::Failed,
        SandboxState::Terminated,
    ];

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

    /// The state named `s` (as printed by [`SandboxState::as_str`]).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
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
///
/// ```
/// use hangar_types::SandboxConfig;
/// let c = SandboxConfig { image: "python:3.11".into(), memory_bytes: Some(512 << 20), ..SandboxConfig::default() };
/// assert!(c.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Image reference.
    pub image: String,
    /// Main command; the sandbox ends when it does (its output is the sandbox's log). Empty: no main command,
    /// the sandbox runs until it is stopped or its lifetime ends — unless [`SandboxConfig::image_command`].
    pub command: Vec<String>,
    /// Without a command, run the image's own (its entrypoint and cmd, as `docker run IMAGE` would).
    pub image_command: bool,
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
    /// Process limit ([`crate::DEFAULT_PIDS_LIMIT`] when `None`).
    pub pids: Option<u64>,
    /// What the writable layers may keep on disk: at most, and by default, the engine's disk budget (an
    /// error when the engine has none).
    pub disk_bytes: Option<u64>,
    /// The sandbox is stopped after this long.
    pub max_lifetime: Duration,
    /// Grace used when the lifetime ends.
    pub stop_grace: Duration,
    /// What it may reach on the network (`None`: the engine's default, loopback only unless configured).
    pub network: Option<NetworkPolicy>,
    /// Owner of the sandbox (the server's tenant; empty for local use).
    pub tenant: String,
    /// Client-chosen id making creation idempotent per tenant: a retry returns the first sandbox.
    pub request_id: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: BUILTIN_IMAGE.into(),
            command: vec![],
            image_command: false,
            env: vec![],
            tags: BTreeMap::new(),
            workdir: None,
            cpus: None,
            memory_bytes: None,
            pids: None,
            disk_bytes: None,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            stop_grace: DEFAULT_STOP_GRACE,
            network: None,
            tenant: String::new(),
            request_id: None,
        }
    }
}

impl SandboxConfig {
    /// Checks every rule of a create request that needs no image or engine, naming the field that breaks one.
    ///
    /// ```
    /// use hangar_types::SandboxConfig;
    /// let c = SandboxConfig { memory_bytes: Some(1 << 20), ..SandboxConfig::default() };
    /// assert_eq!(c.validate().unwrap_err().to_string(), "memory_bytes: 1048576 bytes is below the 8 MiB minimum");
    /// ```
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.command.is_empty() {
            check_argv("command", &self.command)?;
            if self.image_command {
                return Err(Invalid::new("image_command", "a command is given too: ask for one or the other"));
            }
        }
        check_env(&self.env)?;
        if let Some(cpus) = self.cpus {
            if !(cpus.is_finite() && cpus >= 0.01) {
                return Err(Invalid::new("cpus", format!("{cpus} is not a positive number of cores (at least 0.01)")));
            }
            if cpus > MAX_CPUS {
                return Err(Invalid::new("cpus", format!("{cpus} exceeds {MAX_CPUS}")));
            }
        }
        if let Some(m) = self.memory_bytes {
            if m < MIN_MEMORY_BYTES {
                return Err(Invalid::new("memory_bytes", format!("{m} bytes is below the 8 MiB minimum")));
            }
            if m > MAX_MEMORY_BYTES {
                return Err(Invalid::new("memory_bytes", format!("{m} bytes exceeds the 1 TiB maximum")));
            }
        }
        if self.pids == Some(0) {
            return Err(Invalid::new("pids", "must be positive"));
        }
        if self.max_lifetime.is_zero() || self.max_lifetime > MAX_LIFETIME {
            return Err(Invalid::new(
                "max_lifetime",
                format!("must be between 1 ms and {} days", MAX_LIFETIME.as_secs() / 86400),
            ));
        }
        if self.stop_grace > MAX_STOP_GRACE {
            return Err(Invalid::new("stop_grace", "exceeds one hour"));
        }
        if self.request_id.as_ref().is_some_and(|r| r.len() > MAX_REQUEST_ID) {
            return Err(Invalid::new("request_id", format!("exceeds {MAX_REQUEST_ID} bytes")));
        }
        if let Some(n) = &self.network {
            n.validate()?;
        }
        if self.workdir.as_deref().is_some_and(|w| w.contains('\0')) {
            return Err(Invalid::new("workdir", "contains a NUL byte"));
        }
        Ok(())
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
    /// What it may reach on the network (changed by `set_network` while it runs).
    #[serde(default)]
    pub network: NetworkPolicy,
}

impl SandboxInfo {
    /// The record of sandbox `id` as it is being made from `c`, in `state`, with the process limit and network
    /// its backend gives it.
    ///
    /// ```
    /// use hangar_types::{NetworkPolicy, SandboxConfig, SandboxInfo, SandboxState};
    /// let c = SandboxConfig { command: vec!["sleep".into(), "1".into()], ..SandboxConfig::default() };
    /// let info = SandboxInfo::new("sb-1".into(), &c, SandboxState::Creating, None, NetworkPolicy::default());
    /// assert_eq!((info.command, info.ended_at_ms), (c.command, None));
    /// ```
    pub fn new(id: String, c: &SandboxConfig, state: SandboxState, pids: Option<u64>, network: NetworkPolicy) -> Self {
        Self {
            id,
            state,
            image: c.image.clone(),
            command: c.command.clone(),
            tags: c.tags.clone(),
            cpus: c.cpus,
            memory_bytes: c.memory_bytes,
            pids,
            max_lifetime_ms: c.max_lifetime.as_millis() as u64,
            created_at_ms: crate::now_ms(),
            ended_at_ms: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            error: None,
            tenant: c.tenant.clone(),
            progress: None,
            network,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_back() {
        for s in SandboxState::ALL {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
        }
        assert_eq!(SandboxState::parse("exploded"), None);
    }

    #[test]
    fn validation_names_the_field() {
        let d = SandboxConfig::default;
        let cases = [
            (SandboxConfig { command: vec![String::new()], ..d() }, "command: argv[0] is empty"),
            (
                SandboxConfig { command: vec!["sh".into()], image_command: true, ..d() },
                "image_command: a command is given too: ask for one or the other",
            ),
            (
                SandboxConfig { cpus: Some(f64::NAN), ..d() },
                "cpus: NaN is not a positive number of cores (at least 0.01)",
            ),
            (SandboxConfig { cpus: Some(2000.0), ..d() }, "cpus: 2000 exceeds 1024"),
            (
                SandboxConfig { memory_bytes: Some(u64::MAX), ..d() },
                "memory_bytes: 18446744073709551615 bytes exceeds the 1 TiB maximum",
            ),
            (SandboxConfig { max_lifetime: Duration::ZERO, ..d() }, "max_lifetime: must be between 1 ms and 30 days"),
            (SandboxConfig { request_id: Some("x".repeat(300)), ..d() }, "request_id: exceeds 256 bytes"),
            (SandboxConfig { env: vec![(String::new(), String::new())], ..d() }, "env: \"\" is not a valid variable"),
        ];
        for (c, want) in cases {
            assert_eq!(c.validate().unwrap_err().to_string(), want);
        }
        assert!(d().validate().is_ok());
    }
}
