//! Execs: commands run for clients. Each exec's output goes into a journal (one file per stream in the
//! sandbox's host-side state directory) that outlives any client: readers attach and resume from any offset,
//! a slow reader slows the command instead of losing bytes, and a reader that is gone does not stall it.
//!
//! Retention per stream: everything up to the journal cap. Past the cap, when no attached reader still needs
//! them, the oldest bytes after a kept head are dropped (hole-punched) and readers are told the exact range;
//! while an attached reader still needs them, the pipe is simply not read, so the command blocks on write.

use crate::spare::{self, Handover, Order, Spare};
use crate::state::{set_cloexec, Reaped, Shared, STATE_DIR_FD};
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{
    Ending, ErrorKind, ExecEnd, ExecInfo, ExecSpec, OnDisconnect, Progress, Request, Response, StartFailure, Usage,
};
use hangar_runtime::cgroups::ExecCgroup;
use hangar_types::{Output, MAIN_EXEC};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch, Notify};

use hangar_types::{DEFAULT_EXEC_RETAIN as DEFAULT_RETAIN, DEFAULT_JOURNAL_CAP as DEFAULT_CAP};
/// Pipes are enlarged to this so a fast writer makes fewer round trips through the agent.
const PIPE_SIZE: i32 = 1 << 20;
/// After the process tree is gone, a pipe still held open (by nothing we can see) is closed after this.
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// How long bytes that cannot be journaled are kept after their process ended, before they are given up.
const WRITE_GIVE_UP: Duration = Duration::from_secs(30);
/// After a spare helper could not be prepared, how long execs start directly before another is tried.
const SPARE_RETRY: Duration = Duration::from_secs(5);
/// How long after an exec's end, with no exec started meanwhile, the next spare helper is prepared (see
/// `launch::refill_spare_when_quiet`).
const SPARE_AFTER_QUIET: Duration = Duration::from_millis(5);
/// Most cgroups of ended execs kept for execs to come (as many as ran at once, up to this).
const MAX_SPARE_CGROUPS: usize = 4;
/// Ended execs whose journal expired are forgotten beyond this many.
const MAX_EXPIRED: usize = 1024;

mod launch;
mod running;
mod serve;
mod stdin;

use launch::start;
use running::{pump, retain, supervise};

pub(crate) use launch::{adopt_main, end_idle_main, main_end, start_failure};
pub(crate) use serve::{attach, start_and_attach};
pub(crate) use stdin::stdin;

pub(crate) type ExecRef = Rc<RefCell<Exec>>;

/// The sandbox's execs, oldest first.
pub(crate) struct Table {
    by_id: HashMap<String, ExecRef>,
    /// The same execs, oldest first (walked at every exec's end: no lookups by id on the way).
    order: std::collections::VecDeque<ExecRef>,
    next: u64,
    pub(crate) cgroups: hangar_runtime::cgroups::CgroupDirs,
    /// At least what the exec journals hold (the last count of `running::keep_within_budget`, plus every
    /// byte journaled since; drops and expiries only lower the truth): while it is within the budget, nothing
    /// needs counting.
    pub(crate) journals_at_most: u64,
}

impl Table {
    pub(crate) fn new(cgroups: hangar_runtime::cgroups::CgroupDirs) -> Self {
        Self { by_id: HashMap::new(), order: Default::default(), next: 1, cgroups, journals_at_most: 0 }
    }

    fn fresh_id(&mut self) -> String {
        loop {
            let id = format!("ex-{}", self.next);
            self.next += 1;
            if !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    fn insert(&mut self, e: ExecRef) {
        let id = e.borrow().id.clone();
        self.by_id.insert(id, e.clone());
        self.order.push_back(e);
    }

    pub(crate) fn running(&self) -> Vec<ExecRef> {
        self.order.iter().filter(|e| e.borrow().end.is_none()).cloned().collect()
    }

    /// Forgets the oldest execs whose journal expired, beyond [`MAX_EXPIRED`] of them.
    fn forget_expired(&mut self) {
        let expired = self.order.iter().filter(|e| e.borrow().expired).count();
        let mut excess = expired.saturating_sub(MAX_EXPIRED);
        if excess == 0 {
            return;
        }
        let by_id = &mut self.by_id;
        self.order.retain(|e| {
            let e = e.borrow();
            if excess == 0 || !e.expired {
                return true;
            }
            excess -= 1;
            by_id.remove(&e.id);
            false
        });
    }
}

pub(crate) struct Exec {
    id: String,
    argv: Vec<String>,
    pid: i32,
    started_at_ms: u64,
    started: Instant,
    tty: bool,
    merged: bool,
    journal: hangar_journal::Writer,
    /// When its bytes arrived (the main command's log only).
    times: Option<hangar_journal::TimeWriter>,
    progress: watch::Sender<Progress>,
    /// Woken when readers advance or leave, so a pump waiting for room re-checks.
    space: Rc<Notify>,
    stdin: Rc<tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>>,
    stdin_open: bool,
    stdin_acked: u64,
    /// The PTY master, for resizes.
    pty: Option<OwnedFd>,
    cgroup: Option<ExecCgroup>,
    /// Without a cgroup of its own: the sandbox's OOM kills when it started (see [`Exec::on_started`]).
    oom_kills_before: u64,
    /// Why the agent killed it, when it did.
    killed_for: Option<Ending>,
    end: Option<ExecEnd>,
    ended: Option<Instant>,
    expired: bool,
    policy: OnDisconnect,
    retain: Duration,
    left_at: Instant,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> (ErrorKind, String) {
    (kind, message.into())
}

fn state_dir() -> BorrowedFd<'static> {
    // SAFETY: the runtime placed the state directory at this number and nothing closes it while we run.
    unsafe { BorrowedFd::borrow_raw(STATE_DIR_FD) }
}

fn nonblocking(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // (`FIONBIO` sets just that flag: one system call, not a `F_GETFL` and a `F_SETFL`.)
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int through a pointer to a local.
    if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::FIONBIO, &on) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the AsyncFd owns `fd`, so it stays open and means the same file for the AsyncFd's lifetime.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

impl Exec {
    fn info(&self) -> ExecInfo {
        ExecInfo {
            id: self.id.clone(),
            argv: self.argv.clone(),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            tty: self.tty,
            merged: self.merged,
            stdin_open: self.stdin_open,
            stdin_acked: self.stdin_acked,
            written: self.journal.written(),
            attached: self.journal.readers() as u32,
            end: self.end.clone(),
            expired: self.expired,
        }
    }

    /// Its process runs (`pid`, `cgroup` set). Without a cgroup of its own it shares the agent's (a Pod's): the
    /// sandbox's OOM kills are counted from now (one that hits it is its), and it is made the OOM killer's first
    /// choice, before the agent (a process may raise its children's score, never lower it, without privilege).
    fn on_started(&mut self) {
        if self.cgroup.as_ref().is_some_and(|c| c.holds_processes()) {
            return;
        }
        self.oom_kills_before = hangar_runtime::cgroups::own_oom_kills();
        let _ = std::fs::write(format!("/proc/{}/oom_score_adj", self.pid), "1000");
    }

    /// Whether the stream has no room for more until a reader moves on.
    fn full(&mut self, i: usize) -> bool {
        if self.journal.make_room(i) {
            self.publish();
        }
        self.journal.is_full(i)
    }

    /// Journals `data`; on a write error (the host's disk is full) nothing is counted and the caller keeps
    /// the bytes, unless `lose` says to count them anyway (readers then get a gap for them).
    fn append(&mut self, i: usize, data: &[u8], lose: bool) -> io::Result<()> {
        if let Some(t) = self.times.as_mut().filter(|_| i == 0) {
            // A log without times is still a log: the bytes matter more than when they came.
            let _ = t.note(state_dir(), self.journal.written()[0], hangar_types::now_ms());
        }
        self.journal.append(i, data, lose)?;
        self.publish();
        Ok(())
    }

    /// Journals what pipe `src` holds, at most `max` bytes ([`hangar_journal::Writer::append_from`]).
    fn append_from(&mut self, i: usize, src: std::os::fd::BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        let at = self.journal.written()[0];
        let n = self.journal.append_from(i, src, max)?;
        if let Some(t) = self.times.as_mut().filter(|_| i == 0 && n > 0) {
            let _ = t.note(state_dir(), at, hangar_types::now_ms());
        }
        self.publish();
        Ok(n)
    }

    fn publish(&self) {
        self.progress.send_replace(self.journal.progress(self.end.clone()));
    }

    fn signal(&self, sig: Signal) {
        if self.end.is_some() || self.pid <= 0 {
            return;
        }
        match sig {
            Signal::SIGKILL => self.kill_tree(),
            _ => {
                let _ = kill(Pid::from_raw(-self.pid), sig);
            }
        }
    }

    /// SIGKILLs the exec's process group in one blow, then what it started beyond the group: its cgroup's
    /// processes, or, where execs have no cgroups (a Pod's agent), its descendants as `/proc` showed them
    /// before anyone died (while the tree still hung together). The group goes first so that no shell in it
    /// lives to see its children killed one by one (it would report them, "Killed", in the output).
    fn kill_tree(&self) {
        let descendants = match &self.cgroup {
            Some(cg) if cg.holds_processes() => None,
            _ => Some(hangar_runtime::process::descendants(self.pid)),
        };
        let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
        match (descendants, &self.cgroup) {
            (Some(pids), _) => {
                for p in pids {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            (None, Some(cg)) => {
                cg.kill_all();
            }
            (None, None) => {}
        }
    }

    /// Kills the whole tree (process group and cgroup) for `why`, unless it already ended.
    pub(crate) fn kill_for(&mut self, why: Ending) {
        if self.end.is_none() {
            self.killed_for.get_or_insert(why);
            self.signal(Signal::SIGKILL);
        }
    }

    /// Gives its terminal (a PTY exec's) the size `rows` × `cols`; nothing for an exec without one.
    fn resize(&self, rows: u16, cols: u16) {
        if let Some(pty) = &self.pty {
            let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
            // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
            unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }

    fn on_signal(&mut self, signal: i32) -> Result<(), (ErrorKind, String)> {
        let sig = Signal::try_from(signal).map_err(|_| err(ErrorKind::InvalidArgument, format!("signal {signal}")))?;
        if sig == Signal::SIGKILL {
            self.kill_for(Ending::Cancelled);
        } else {
            self.signal(sig);
        }
        Ok(())
    }
}

fn lookup(state: &Shared, id: &str) -> Result<ExecRef, (ErrorKind, String)> {
    state
        .borrow()
        .table
        .by_id
        .get(id)
        .cloned()
        .ok_or_else(|| err(ErrorKind::ExecNotFound, format!("exec {id} not found")))
}

/// Answers [`Request::ListExecs`].
pub(crate) fn list(state: &Shared) -> Response {
    let st = state.borrow();
    Response::Execs {
        // The main command is the sandbox's log, not an exec anyone ran.
        execs: st.table.order.iter().map(|e| e.borrow()).filter(|e| e.id != MAIN_EXEC).map(|e| e.info()).collect(),
    }
}

/// Answers a [`Request::Signal`] that names its exec.
pub(crate) fn signal(state: &Shared, id: &str, signal: i32) -> Response {
    match lookup(state, id).and_then(|e| e.borrow_mut().on_signal(signal)) {
        Ok(()) => Response::Done,
        Err((kind, message)) => Response::Error { kind, message },
    }
}

/// Marks every running exec as ended by the sandbox's end (called as the sandbox shuts down). The main
/// command's end is its own status.
pub(crate) fn sandbox_ending(state: &Shared) {
    for e in state.borrow().table.running().into_iter().filter(|e| e.borrow().id != MAIN_EXEC) {
        e.borrow_mut().killed_for.get_or_insert(Ending::SandboxGone);
    }
}
