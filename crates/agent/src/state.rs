//! The agent's shared state: what the request handlers, the reaper and the execs all reach, on the agent's
//! one thread.

use crate::confined::SandboxRoot;
use crate::execs::Table;
use hangar_agent_protocol::Workload;
use nix::sys::wait::WaitStatus;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use tokio::sync::oneshot;

/// The host-side state directory (the sandbox's), placed here by the runtime.
pub(crate) const STATE_DIR_FD: i32 = 5;

pub(crate) struct State {
    pub(crate) cfg: Workload,
    /// Where every path a user gives is resolved.
    pub(crate) root: SandboxRoot,
    pub(crate) user: Option<(u32, u32)>,
    /// `/dev/null` for commands' stdin, opened before the workload could replace it (with a FIFO, whose
    /// opening would hold up the agent), and handed to each exec as it is (no `open` through the sandbox's
    /// root, no `dup`).
    pub(crate) devnull: Rc<OwnedFd>,
    pub(crate) main_pid: i32,
    /// Exec processes waiting for their exit status (and what they used), by pid.
    pub(crate) waiters: HashMap<i32, oneshot::Sender<Reaped>>,
    pub(crate) main_status: Option<WaitStatus>,
    pub(crate) stopping: bool,
    pub(crate) live_execs: usize,
    /// Inline attachments open now (see `execs::serve`): the agent's end waits a moment for them to have
    /// their exec's last bytes and end, which exist nowhere else once the agent is gone.
    pub(crate) inline_readers: usize,
    pub(crate) table: Table,
    /// A helper waiting to become the next exec (see `spare`).
    pub(crate) spare: Option<crate::spare::Spare>,
    pub(crate) spare_pending: bool,
    /// When preparing a spare last failed (none is tried for a while after).
    pub(crate) spare_failed: Option<std::time::Instant>,
    /// The helper cannot run in this sandbox's image: no spare is tried again.
    pub(crate) spare_unusable: bool,
    pub(crate) spare_count: u64,
    /// An empty journal for the next exec (see `hangar_journal::Spare`), and whether one is being made.
    pub(crate) spare_journal: Option<hangar_journal::Spare>,
    pub(crate) spare_journal_pending: bool,
    /// Cgroups of ended execs, empty and reset, for the next execs (or spare helpers): no cgroup made and
    /// removed per exec (a memory cgroup's mkdir is ~0.1 ms; a removed one lingers in the
    /// kernel, dying, for as long as anything it was charged for stays cached).
    pub(crate) spare_cgroups: Vec<hangar_runtime::cgroups::ExecCgroup>,
    /// Execs started so far (the main command not counted).
    pub(crate) execs_started: u64,
}

pub(crate) type Shared = Rc<RefCell<State>>;

/// Marks `fd` close-on-exec.
pub(crate) fn set_cloexec(fd: &impl AsFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
}

/// A wait status as (exit code, signal); a process whose status is unknown counts as SIGKILLed.
pub(crate) fn exit_of(ws: Option<WaitStatus>) -> (Option<i32>, Option<i32>) {
    match ws {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, Some(libc::SIGKILL)),
    }
}

/// A reaped process: its status, and what the kernel counted for it and the children it reaped in turn (CPU
/// time, the largest resident set), which is its tree's usage where no cgroup of its own measures it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub(crate) status: WaitStatus,
    pub(crate) usage: hangar_runtime::cgroups::CgroupUsage,
}

/// Reaps one exited child, if any (`wait4(-1, WNOHANG)`): `Ok(None)` when children run but none exited.
pub(crate) fn reap_one() -> nix::Result<Option<Reaped>> {
    let mut raw = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes one int and one rusage through pointers to locals that outlive the call.
    let pid = unsafe { libc::wait4(-1, &mut raw, libc::WNOHANG, &mut ru) };
    match pid {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(None),
        pid => {
            let status = WaitStatus::from_raw(nix::unistd::Pid::from_raw(pid), raw)?;
            let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            let usage = hangar_runtime::cgroups::CgroupUsage {
                cpu_user_ns: micros(ru.ru_utime) * 1000,
                cpu_sys_ns: micros(ru.ru_stime) * 1000,
                // Kilobytes.
                peak_memory_bytes: ru.ru_maxrss.max(0) as u64 * 1024,
                oom_kills: 0,
            };
            Ok(Some(Reaped { status, usage }))
        }
    }
}
