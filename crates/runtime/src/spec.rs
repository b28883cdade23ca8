use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything the init agent needs to build one sandbox, written by the engine as JSON and read by the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id (also used in log lines).
    pub id: String,
    /// Hostname inside the sandbox's UTS namespace.
    pub hostname: String,
    /// How to build the root filesystem.
    pub rootfs: RootfsSpec,
    /// The files the agent writes itself into, one per controller hierarchy
    /// ([`crate::cgroups::SandboxCgroup::agent_join_files`]).
    #[serde(alias = "cgroup_procs")]
    pub cgroup_joins: Vec<PathBuf>,
    /// Directories the workload's processes get their cgroups under, one per hierarchy. (Absent in the
    /// configurations of sandboxes made before the workload had a cgroup of its own: still readable.)
    #[serde(default)]
    pub exec_cgroup_parents: Vec<PathBuf>,
    /// Join the network namespace the engine prepared (descriptor [`crate::NETNS_FD`]) instead of staying in
    /// an empty one.
    #[serde(default)]
    pub netns: bool,
}

/// An overlay filesystem: read-only lower layers (topmost first) under a writable upper directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// Lower layers, topmost first.
    pub lower: Vec<PathBuf>,
    /// Writable upper directory (per sandbox).
    pub upper: PathBuf,
    /// Overlay work directory, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// A mount placed over the root overlay, at a path relative to the sandbox root.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSpec {
    /// Another copy-on-write overlay (the built-in image layers the host's `/usr` this way).
    Overlay {
        /// Mount point inside the sandbox, e.g. `usr`.
        target: String,
        /// The overlay.
        overlay: OverlaySpec,
    },
}

/// The root filesystem: a root overlay, extra mounts over it, and where to assemble it on the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The root overlay.
    pub root: OverlaySpec,
    /// Extra mounts, applied in order after the root overlay.
    pub mounts: Vec<MountSpec>,
    /// An empty host directory where the root is assembled (visible only in the sandbox's mount namespace).
    pub mountpoint: PathBuf,
}

/// Resource limits for a sandbox's cgroup.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// CPU limit in cores (e.g. 0.5, 2.0); `None` for no limit.
    pub cpus: Option<f64>,
    /// Memory limit in bytes; `None` for no limit.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
}
