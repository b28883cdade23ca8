//! Privilege drop for the sandbox's init and everything it starts: capabilities, `no_new_privs`, a
//! seccomp filter, and a non-dumpable agent.

use crate::{Error, Result};
use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::{BTreeMap, HashSet};

/// Capabilities a sandbox keeps: Docker's long-standing default set less MKNOD. None of them reaches outside
/// the sandbox's namespaces; MKNOD is dropped because a device node is the one file that names something of
/// the host (the root, `/dev` and every other mount are `nodev` and the device allow-list (cgroup v1 `devices`, a
/// BPF program on v2) admits only the devices in `/dev` besides). Notably absent too are SYS_ADMIN (mounts, namespaces), SYS_PTRACE, SYS_MODULE,
/// SYS_RAWIO, SYS_TIME, NET_ADMIN, SYS_RESOURCE, SYS_BOOT, MAC_ADMIN, BPF, PERFMON and DAC_READ_SEARCH
/// (open_by_handle_at, the "shocker" escape).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// System calls that fail with EPERM inside a sandbox, and why:
/// - mounts and namespaces (`mount`, `umount2`, `pivot_root`, the new mount API, `unshare`, `setns`): the
///   sandbox's view of the filesystem and its namespaces are fixed at creation;
/// - the kernel itself (`kexec_*`, `*_module`, `reboot`, `swapon/off`, `acct`, `syslog`, `quotactl`,
///   `iopl`, `ioperm`, clock setters, `personality` tricks are left to caps);
/// - large kernel attack surface rarely needed by workloads (`bpf`, `perf_event_open`, `userfaultfd`,
///   `keyctl`, `add_key`, `request_key`, `open_by_handle_at`, `name_to_handle_at`, `lookup_dcookie`,
///   `process_vm_writev` is allowed: the pid namespace already confines it, as it does `ptrace`).
///
/// `clone` with any namespace flag is refused too, and so is `socket` for the families in
/// [`DENIED_SOCKET_FAMILIES`]; `clone3` reports ENOSYS so that libcs fall back to `clone`, whose flags the
/// filter can inspect.
pub const DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
];

/// Socket families a sandbox may not open, as in Docker's profile: `AF_VSOCK` talks to the hypervisor and
/// other VMs on the host, which no namespace confines.
pub const DENIED_SOCKET_FAMILIES: &[(&str, i32)] = &[("AF_VSOCK", libc::AF_VSOCK)];

const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Drops capabilities to [`DEFAULT_CAPABILITIES`], makes the process non-dumpable (so sandbox processes
/// cannot open the agent's host-side descriptors through `/proc/1/fd`), sets `no_new_privs` and installs
/// the seccomp filter. Inherited by everything the agent starts.
pub(crate) fn harden() -> Result<()> {
    let keep: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Caps(format!("drop {cap} from bounding set: {e}")))?;
        }
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::set(None, set, &keep).map_err(|e| Error::Caps(format!("set {set:?}: {e}")))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| Error::Caps(format!("clear ambient: {e}")))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| Error::sys("prctl", "PR_SET_DUMPABLE", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| Error::sys("prctl", "PR_SET_NO_NEW_PRIVS", e))?;
    for prog in seccomp_programs()? {
        seccompiler::apply_filter(&prog).map_err(|e| Error::Seccomp(e.to_string()))?;
    }
    Ok(())
}

fn arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| Error::Seccomp(format!("{e:?}")))
}

/// The filters as data: one answering EPERM, one answering ENOSYS for `clone3`.
fn seccomp_programs() -> Result<Vec<BpfProgram>> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS.iter().map(|(_, nr)| (*nr, vec![])).collect();
    let ns_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*flag), *flag)
                .map_err(|e| Error::Seccomp(e.to_string()))?;
            SeccompRule::new(vec![cond]).map_err(|e| Error::Seccomp(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    deny.insert(libc::SYS_clone, ns_rules);
    let family_rules = DENIED_SOCKET_FAMILIES
        .iter()
        .map(|(_, family)| {
            let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *family as u64)
                .map_err(|e| Error::Seccomp(e.to_string()))?;
            SeccompRule::new(vec![cond]).map_err(|e| Error::Seccomp(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    deny.insert(libc::SYS_socket, family_rules);
    let filter = |rules, errno: i32| -> Result<BpfProgram> {
        let f = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch()?)
            .map_err(|e| Error::Seccomp(e.to_string()))?;
        f.try_into().map_err(|e: seccompiler::BackendError| Error::Seccomp(e.to_string()))
    };
    Ok(vec![filter(deny, libc::EPERM)?, filter(BTreeMap::from([(libc::SYS_clone3, vec![])]), libc::ENOSYS)?])
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile_for_this_arch() {
        let progs = super::seccomp_programs().expect("filters build");
        assert_eq!(progs.len(), 2);
        assert!(progs[0].len() > super::DENIED_SYSCALLS.len(), "every denied call has a jump in the program");
    }
}
