//! Linux isolation for one Hangar sandbox.
//!
//! This crate owns every raw syscall Hangar makes to build a sandbox: the namespaces it is cloned into
//! ([`spawn_agent`]), the cgroups that limit it ([`cgroups`]), and the steps its init agent runs on itself before it
//! serves anything ([`enter`]): an overlay root over image layers, a fresh `/proc` with masked paths, a minimal
//! `/dev`, `pivot_root`, its network ([`net`]: loopback only, or a veth pair under Hangar's nftables rules), a capability drop, `no_new_privs` and a seccomp filter.
//!
//! It is not for deciding *what* a sandbox is (the engine does that) or for running commands in it (the
//! agent does that). All `unsafe` in Hangar lives here and in the agent (the CLI's two terminal ioctls aside), each block with
//! a `SAFETY` comment.

pub mod cgroups;
pub mod devices;
pub mod disk;
mod error;
pub mod net;
pub mod overlay;
pub mod process;
mod rootfs;
mod security;
mod spawn;
mod spec;

pub use error::{Error, Result};
pub use security::{DEFAULT_CAPABILITIES, DENIED_SOCKET_FAMILIES, DENIED_SYSCALLS};
pub use spawn::{
    cloexec_descriptors_from, close_descriptors_from, exec_process, exec_report, note_signal_dispositions, spawn_agent,
    spawn_process, AgentFds, ProcessSpec, SpawnedAgent, NETNS_FD,
};
pub use spec::{Limits, MountSpec, OverlaySpec, RootfsSpec, SandboxSpec};

/// Turns the calling process (freshly cloned by [`spawn_agent`], still seeing the host's mounts) into the
/// sandbox's init: joins its cgroups, builds and enters its root filesystem, and drops privileges.
///
/// Runs in the agent binary before it starts serving; every step is in the order a reader would do it by
/// hand (the bubblewrap recipe): cgroups → mount namespace → root → hostname → network → privileges.
///
/// Returns the sandbox's cgroup directories, opened while they are still reachable, for per-exec cgroups.
pub fn enter(spec: &SandboxSpec) -> Result<cgroups::CgroupDirs> {
    if spec.netns {
        // SAFETY: the runtime placed the namespace at this number for us alone; it is closed once joined.
        let ns = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(NETNS_FD) };
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::sys("setns", "the sandbox's network namespace", e))?;
    }
    cgroups::join(&spec.cgroup_joins)?;
    let dirs = cgroups::CgroupDirs::open(&spec.exec_cgroup_parents, &spec.id);
    rootfs::unshare_cgroup_namespace()?;
    rootfs::build_and_pivot(&spec.rootfs)?;
    nix::unistd::sethostname(&spec.hostname).map_err(|e| Error::sys("sethostname", &spec.hostname, e))?;
    rootfs::loopback_up()?;
    security::harden()?;
    Ok(dirs)
}
