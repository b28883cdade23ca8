//! The agent's shared state: what the request handlers, the reaper and the execs all reach, on the agent's
//! one thread.

use crate::confined::SandboxRoot;
use crate::execs::Table;
use hangar_agent_protocol::Workload;
use nix::sys::wait::WaitStatus;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::rc::Rc;
use tokio::sync::oneshot;

/// The host-side state directory (the sandbox's), placed here by the runtime.
pub(crate) const STATE_DIR_FD: i32 = 5;

pub(crate) struct State {
    pub(crate) cfg: Workload,
    /// Where every path a user gives is resolved.
    pub(crate) root: SandboxRoot,
    pub(crate) user: Option<(u32, u32)>,
    pub(crate) main_pid: i32,
    /// Exec processes waiting for their exit status, by pid.
    pub(crate) waiters: HashMap<i32, oneshot::Sender<WaitStatus>>,
    pub(crate) main_status: Option<WaitStatus>,
    pub(crate) stopping: bool,
    pub(crate) live_execs: usize,
    pub(crate) table: Table,
    /// A helper waiting to become the next exec (see `spare`).
    pub(crate) spare: Option<crate::spare::Spare>,
    pub(crate) spare_pending: bool,
    /// When preparing a spare last failed (none is tried for a while after).
    pub(crate) spare_failed: Option<std::time::Instant>,
    /// The helper cannot run in this sandbox's image: no spare is tried again.
    pub(crate) spare_unusable: bool,
    pub(crate) spare_count: u64,
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
