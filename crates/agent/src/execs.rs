//! Execs: commands run for clients. Each exec's output goes into a journal (one file per stream in the
//! sandbox's host-side state directory) that outlives any client: readers attach and resume from any offset,
//! a slow reader slows the command instead of losing bytes, and a reader that is gone does not stall it.
//!
//! Retention per stream: everything up to the journal cap. Past the cap, when no attached reader still needs
//! them, the oldest bytes after a kept head are dropped (hole-punched) and readers are told the exact range;
//! while an attached reader still needs them, the pipe is simply not read, so the command blocks on write.

use crate::server::{start_failure, Shared, STATE_DIR_FD};
use crate::spare::{self, Handover, Order, Spare};
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{
    Ending, ErrorKind, ExecEnd, ExecInfo, ExecSpec, OnDisconnect, Progress, Request, Response, StartFailure, Usage,
};
use hangar_runtime::cgroups::ExecCgroup;
use hangar_types::Output;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
/// Ended execs whose journal expired are forgotten beyond this many.
const MAX_EXPIRED: usize = 1024;

pub(crate) type ExecRef = Rc<RefCell<Exec>>;

/// The sandbox's execs, oldest first.
pub(crate) struct Table {
    by_id: HashMap<String, ExecRef>,
    order: Vec<String>,
    next: u64,
    pub(crate) cgroups: hangar_runtime::cgroups::CgroupDirs,
}

impl Table {
    pub(crate) fn new(cgroups: hangar_runtime::cgroups::CgroupDirs) -> Self {
        Self { by_id: HashMap::new(), order: Vec::new(), next: 1, cgroups }
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

    pub(crate) fn running(&self) -> Vec<ExecRef> {
        self.by_id.values().filter(|e| e.borrow().end.is_none()).cloned().collect()
    }

    fn forget_expired(&mut self) {
        let expired: Vec<String> =
            self.order.iter().filter(|id| self.by_id.get(*id).is_some_and(|e| e.borrow().expired)).cloned().collect();
        for id in expired.iter().take(expired.len().saturating_sub(MAX_EXPIRED)) {
            self.by_id.remove(id);
            self.order.retain(|o| o != id);
        }
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
    progress: watch::Sender<Progress>,
    /// Woken when readers advance or leave, so a pump waiting for room re-checks.
    space: Rc<Notify>,
    stdin: Rc<tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>>,
    stdin_open: bool,
    stdin_acked: u64,
    /// The PTY master, for resizes.
    pty: Option<OwnedFd>,
    cgroup: Option<ExecCgroup>,
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
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
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
        self.journal.append(i, data, lose)?;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        self.progress.send_replace(self.journal.progress(self.end.clone()));
    }

    fn signal(&self, sig: Signal) {
        if self.end.is_some() || self.pid <= 0 {
            return;
        }
        let _ = kill(Pid::from_raw(-self.pid), sig);
        if sig == Signal::SIGKILL {
            if let Some(cg) = &self.cgroup {
                cg.kill_all();
            }
        }
    }

    /// Kills the whole tree (process group and cgroup) for `why`, unless it already ended.
    pub(crate) fn kill_for(&mut self, why: Ending) {
        if self.end.is_none() {
            self.killed_for.get_or_insert(why);
            self.signal(Signal::SIGKILL);
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

/// Checks the request; the working directory it names, resolved inside the sandbox.
fn validate(state: &Shared, r: &ExecSpec) -> Result<OwnedFd, (ErrorKind, String)> {
    let st = state.borrow();
    if st.stopping {
        return Err(err(ErrorKind::Stopping, "the sandbox is stopping"));
    }
    st.root.open_dir(r.cwd.as_deref().unwrap_or(&st.cfg.workdir))
}

/// The exec `r` names, started now, or the existing one when its id is taken by the same command.
pub(crate) fn start(state: &Shared, r: ExecSpec) -> Result<ExecRef, (ErrorKind, String)> {
    // The engine checked already; an agent trusts no peer with its journal paths.
    r.validate().map_err(|e| err(ErrorKind::InvalidArgument, e.to_string()))?;
    if let Some(id) = &r.id {
        if let Some(e) = state.borrow().table.by_id.get(id) {
            if e.borrow().argv != r.argv {
                return Err(err(ErrorKind::ExecConflict, format!("exec id {id} is taken by another command")));
            }
            return Ok(e.clone());
        }
    }
    let cwd = validate(state, &r)?;
    let id = match &r.id {
        Some(id) => id.clone(),
        None => state.borrow_mut().table.fresh_id(),
    };
    let io_err = |what: &str, e: io::Error| err(ErrorKind::Other, format!("exec {id}: {what}: {e}"));
    let journal = hangar_journal::Writer::create(state_dir(), &id, r.journal_cap.unwrap_or(DEFAULT_CAP))
        .map_err(|e| io_err("journal", e))?;
    let exec = Rc::new(RefCell::new(Exec {
        id: id.clone(),
        argv: r.argv.clone(),
        pid: 0,
        started_at_ms: hangar_types::now_ms(),
        started: Instant::now(),
        tty: r.output.is_pty(),
        merged: r.output == Output::Merged,
        journal,
        progress: watch::channel(Progress::default()).0,
        space: Rc::new(Notify::new()),
        stdin: Rc::new(tokio::sync::Mutex::new(None)),
        stdin_open: false,
        stdin_acked: 0,
        pty: None,
        cgroup: None,
        killed_for: None,
        end: None,
        ended: None,
        expired: false,
        policy: r.on_disconnect,
        retain: r.retain.unwrap_or(DEFAULT_RETAIN),
        left_at: Instant::now(),
    }));
    {
        let mut st = state.borrow_mut();
        st.table.by_id.insert(id.clone(), exec.clone());
        st.table.order.push(id.clone());
    }
    match spawn(state, &exec, &r, &cwd) {
        Ok(()) => {}
        Err(failure) => {
            let mut e = exec.borrow_mut();
            e.end = Some(ExecEnd::failed_to_start(failure));
            e.ended = Some(Instant::now());
            e.publish();
            drop(e);
            tokio::task::spawn_local(retain(state.clone(), exec.clone()));
        }
    }
    Ok(exec)
}

/// Starts the process with its pipes (or terminal) and cgroup, and the tasks that journal and supervise it.
/// On failure: why, typed.
fn spawn(state: &Shared, exec: &ExecRef, r: &ExecSpec, cwd: &OwnedFd) -> Result<(), StartFailure> {
    let id = exec.borrow().id.clone();
    let io_err = |what: &str, e: io::Error| {
        StartFailure::new(hangar_types::StartFailureKind::Other, format!("exec {id}: {what}: {e}"))
    };
    let start_err = |e: io::Error| start_failure(&r.argv[0], &e);
    let (user, mut env) = {
        let st = state.borrow();
        (st.user, st.cfg.env.clone())
    };
    if r.output.is_pty() && !r.env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    env.extend(r.env.iter().cloned());
    // The child's stdio, and our ends: output sources, the stdin sink, the terminal for resizes.
    let mut sources: Vec<OwnedFd> = Vec::new();
    let mut stdin_sink = None;
    let mut pty_ctl = None;
    let stdio: [OwnedFd; 3] = if let Output::Pty { rows, cols } = r.output {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| io_err("openpty", e.into()))?;
        for fd in [&pty.master, &pty.slave] {
            set_cloexec(fd);
        }
        let dup = |f: &OwnedFd| f.try_clone().map_err(|e| io_err("dup pty", e));
        stdin_sink = Some(dup(&pty.master)?);
        pty_ctl = Some(dup(&pty.master)?);
        let slave = [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave];
        sources.push(pty.master);
        slave
    } else {
        let (out_r, out_w) = pipe().map_err(|e| io_err("pipe", e))?;
        let _ = nix::fcntl::fcntl(&out_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        sources.push(out_r);
        let err_w = if r.output == Output::Merged {
            out_w.try_clone().map_err(|e| io_err("dup", e))?
        } else {
            let (err_r, err_w) = pipe().map_err(|e| io_err("pipe", e))?;
            let _ = nix::fcntl::fcntl(&err_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            sources.push(err_r);
            err_w
        };
        let stdin = if r.stdin {
            let (in_r, in_w) = pipe().map_err(|e| io_err("pipe", e))?;
            stdin_sink = Some(in_w);
            in_r
        } else {
            File::open("/dev/null").map_err(|e| io_err("/dev/null", e))?.into()
        };
        [stdin, out_w, err_w]
    };
    let order = Order { argv: r.argv.clone(), env, user, tty: r.output.is_pty() };
    let with = || Handover { stdio: stdio.each_ref(), cwd };
    let spare = state.borrow_mut().spare.take();
    let started = match spare {
        Some(spare) => give_to_helper(state, spare, &order, with()),
        None => None,
    };
    let started = match started {
        Some(started) => started,
        // No spare (or it was unusable): started from the agent, paying the cgroup migration on this path.
        None => {
            let cgroup = state.borrow().table.cgroups.create_exec(&format!("exec-{id}")).ok();
            match spare::start_directly(&order, with(), cgroup.as_ref()) {
                Ok(pid) => Ok((pid, expect_exit(state, pid), cgroup)),
                Err(e) => {
                    if let Some(cg) = cgroup {
                        tokio::task::spawn_blocking(move || cg.remove(Duration::from_millis(500)));
                    }
                    Err(e)
                }
            }
        }
    };
    let (pid, exit_rx, cgroup) = match started {
        Ok(started) => started,
        Err(e) => {
            refill_spare(state);
            return Err(start_err(e));
        }
    };
    // Our copies of the child's ends must close now, or the pumps would never see end of file.
    drop(stdio);
    state.borrow_mut().live_execs += 1;
    let sink = match stdin_sink.map(nonblocking).transpose() {
        Ok(s) => s,
        Err(e) => {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            return Err(io_err("stdin", e));
        }
    };
    {
        let mut e = exec.borrow_mut();
        e.pid = pid;
        e.started = Instant::now();
        e.stdin_open = sink.is_some();
        *e.stdin.try_lock().expect("new exec's stdin is free") = sink;
        e.pty = pty_ctl;
        e.cgroup = cgroup;
    }
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    for (i, src) in sources.into_iter().enumerate() {
        let src = nonblocking(src).map_err(|e| io_err("output", e))?;
        pumps.push(tokio::task::spawn_local(pump(exec.clone(), i, src, exited_rx.clone())));
    }
    if let Some(t) = r.timeout {
        let e = exec.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(t).await;
            e.borrow_mut().kill_for(Ending::TimedOut);
        });
    }
    tokio::task::spawn_local(supervise(state.clone(), exec.clone(), exit_rx, pumps, exited_tx));
    Ok(())
}

type Started = (i32, oneshot::Receiver<WaitStatus>, Option<ExecCgroup>);

/// Registers `pid` with the reaper (before it can possibly exit unseen: same thread, no await in between).
fn expect_exit(state: &Shared, pid: i32) -> oneshot::Receiver<WaitStatus> {
    let (tx, rx) = oneshot::channel();
    state.borrow_mut().waiters.insert(pid, tx);
    rx
}

/// Hands the order to a waiting helper. `None` when the helper turned out unusable; `Some(Err)` when the
/// command cannot be executed.
fn give_to_helper(state: &Shared, mut helper: Spare, order: &Order, with: Handover<'_>) -> Option<io::Result<Started>> {
    let exit_rx = expect_exit(state, helper.pid);
    match helper.order(order, with) {
        Ok(Ok(())) => Some(Ok((helper.pid, exit_rx, Some(helper.cgroup)))),
        failed => {
            // The helper exits (or has died); the reaper collects it as an orphan.
            state.borrow_mut().waiters.remove(&helper.pid);
            let _ = kill(Pid::from_raw(helper.pid), Signal::SIGKILL);
            let cg = helper.cgroup;
            tokio::task::spawn_blocking(move || cg.remove(Duration::from_millis(500)));
            match failed {
                Ok(Err(e)) => Some(Err(e)),
                _ => None,
            }
        }
    }
}

/// Prepares the next spare in the background (its cgroup migration off every exec's path).
pub(crate) fn refill_spare(state: &Shared) {
    let cgroup = {
        let mut st = state.borrow_mut();
        let resting = st.spare_failed.is_some_and(|t| t.elapsed() < SPARE_RETRY);
        if st.spare.is_some() || st.spare_pending || resting || st.stopping || st.spare_unusable {
            return;
        }
        st.spare_count += 1;
        match st.table.cgroups.create_exec(&format!("exec-s{}", st.spare_count)) {
            Ok(cg) => cg,
            Err(_) => return,
        }
    };
    state.borrow_mut().spare_pending = true;
    let state = state.clone();
    tokio::task::spawn_local(async move {
        let made = tokio::task::spawn_blocking(move || spare::prepare(cgroup)).await;
        let mut st = state.borrow_mut();
        st.spare_pending = false;
        match made {
            Ok(Ok(spare)) if !st.stopping => {
                st.spare = Some(spare);
                st.spare_failed = None;
            }
            Ok(Ok(spare)) => {
                let _ = kill(Pid::from_raw(spare.pid), Signal::SIGKILL);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // The helper died before it was ready: the agent's binary cannot run on this image's C library
                // (or lack of one). That will not change; execs start directly from now on.
                crate::log!("the exec helper cannot run in this image ({e}); execs start directly");
                st.spare_unusable = true;
            }
            Ok(Err(e)) => {
                // Execs still start, just without the head start (a full pids limit, say); say so once a spell.
                if st.spare_failed.is_none() {
                    crate::log!("no spare exec helper ({e}); execs start directly for now");
                }
                st.spare_failed = Some(Instant::now());
            }
            Err(_) => st.spare_failed = Some(Instant::now()),
        }
    });
}

fn set_cloexec(fd: &impl AsFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
}

async fn read_some(src: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = src.readable().await?;
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Moves one stream's bytes from the process into the journal, pausing while the journal has no room.
async fn pump(e: ExecRef, i: usize, src: AsyncFd<OwnedFd>, mut exited: watch::Receiver<bool>) {
    let mut buf = vec![0u8; hangar_journal::CHUNK];
    loop {
        loop {
            let space = e.borrow().space.clone();
            let room = space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !e.borrow_mut().full(i) {
                break;
            }
            room.await;
        }
        let room = e.borrow().journal.room();
        let got = tokio::select! {
            r = read_some(&src, &mut buf[..room]) => r,
            _ = async { let _ = exited.wait_for(|x| *x).await; tokio::time::sleep(DRAIN_IDLE).await } => break,
        };
        match got {
            // End of file, or EIO from a terminal whose last holder closed it.
            Ok(0) | Err(_) => break,
            Ok(n) => journal(&e, i, &buf[..n], &exited).await,
        }
    }
}

/// Journals what the process wrote. While the journal cannot be written (the host's disk is full) the bytes
/// are kept and the pipe is not read, so the command waits, as for a slow reader; the bytes are given up
/// only [`WRITE_GIVE_UP`] after the process ended.
async fn journal(e: &ExecRef, i: usize, data: &[u8], exited: &watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(10);
    let mut ended_at: Option<Instant> = None;
    loop {
        let lose = ended_at.is_some_and(|t| t.elapsed() >= WRITE_GIVE_UP);
        if lose {
            crate::log!("exec {}: {} bytes given up: the journal could not be written", e.borrow().id, data.len());
        }
        let Err(err) = e.borrow_mut().append(i, data, lose) else { return };
        if delay == Duration::from_millis(10) {
            crate::log!("exec {}: journal write failed, holding the command: {err}", e.borrow().id);
        }
        if *exited.borrow() {
            ended_at.get_or_insert_with(Instant::now);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

fn usage_of(cg: &Option<ExecCgroup>) -> hangar_runtime::cgroups::CgroupUsage {
    cg.as_ref().map(|c| c.usage()).unwrap_or_default()
}

/// Waits for the process, ends its tree, lets the pumps drain, and records the end.
async fn supervise(
    state: Shared,
    e: ExecRef,
    exit: oneshot::Receiver<WaitStatus>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    exited: watch::Sender<bool>,
) {
    let ws = exit.await.ok();
    let wall = e.borrow().started.elapsed();
    {
        // The exec owns its tree: whatever it left running ends with it.
        let ex = e.borrow();
        let _ = kill(Pid::from_raw(-ex.pid), Signal::SIGKILL);
        if let Some(cg) = &ex.cgroup {
            cg.kill_all();
        }
    }
    exited.send_replace(true);
    for p in pumps {
        let _ = p.await;
    }
    let cgroup = e.borrow_mut().cgroup.take();
    let used = usage_of(&cgroup);
    let (code, signal) = match ws {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, Some(libc::SIGKILL)),
    };
    let stdin = {
        let mut ex = e.borrow_mut();
        let ending = match (ex.killed_for.clone(), code, signal) {
            (Some(why), _, _) => why,
            (None, c, _) if used.oom_kills > 0 && c != Some(0) => Ending::OomKilled,
            (None, Some(code), _) => Ending::Exited { code },
            (None, None, s) => Ending::Signaled { signal: s.unwrap_or(libc::SIGKILL) },
        };
        ex.end = Some(ExecEnd {
            ending,
            code,
            signal,
            bytes: ex.journal.written(),
            crc32: ex.journal.crc32(),
            usage: Usage {
                wall_ms: wall.as_millis() as u64,
                cpu_user_us: used.cpu_user_ns / 1000,
                cpu_sys_us: used.cpu_sys_ns / 1000,
                peak_memory_bytes: used.peak_memory_bytes,
            },
        });
        ex.ended = Some(Instant::now());
        ex.journal.close();
        ex.stdin_open = false;
        ex.publish();
        ex.stdin.clone()
    };
    if let Ok(mut s) = stdin.try_lock() {
        s.take();
    }
    state.borrow_mut().live_execs -= 1;
    // The next spare is prepared now, not while this exec ran: its cgroup migration briefly holds a lock that
    // process exits wait for, which would slow the exec it was meant to speed up.
    refill_spare(&state);
    // Removing a memory cgroup takes the kernel ~10 ms: after the end is out, and off the agent's thread.
    if let Some(cg) = cgroup {
        for _ in 0..1000 {
            if cg.kill_all() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = tokio::task::spawn_blocking(move || cg.remove(Duration::from_millis(500))).await;
    }
    retain(state, e).await;
}

/// Keeps the journal until the exec ended, nobody is attached, and its retention has passed; then deletes it.
async fn retain(state: Shared, e: ExecRef) {
    loop {
        let (attached, due) = {
            let ex = e.borrow();
            let since = ex.ended.map_or(ex.left_at, |t| t.max(ex.left_at));
            (ex.journal.readers() > 0, since + ex.retain)
        };
        if !attached && Instant::now() >= due {
            break;
        }
        let wake = if attached { Instant::now() + Duration::from_secs(1) } else { due };
        tokio::time::sleep_until(wake.into()).await;
    }
    let mut ex = e.borrow_mut();
    ex.expired = true;
    hangar_journal::Writer::remove(state_dir(), &ex.id);
    drop(ex);
    state.borrow_mut().table.forget_expired();
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
        execs: st.table.order.iter().filter_map(|id| st.table.by_id.get(id)).map(|e| e.borrow().info()).collect(),
    }
}

/// Answers a [`Request::Signal`] that names its exec.
pub(crate) fn signal(state: &Shared, id: &str, signal: i32) -> Response {
    match lookup(state, id).and_then(|e| e.borrow_mut().on_signal(signal)) {
        Ok(()) => Response::Done,
        Err((kind, message)) => Response::Error { kind, message },
    }
}

/// Serves one reader: the exec's info, then its journal's progress, while taking acks, signals and resizes.
pub(crate) async fn attach(state: &Shared, conn: Conn, exec: &str, from: [u64; 2]) {
    let e = match lookup(state, exec) {
        Ok(e) if e.borrow().expired => {
            let _ = conn
                .send(&Response::Error {
                    kind: ErrorKind::ExecExpired,
                    message: format!("exec {exec}: its output expired (retention passed)"),
                })
                .await;
            return;
        }
        Ok(e) => e,
        Err((kind, message)) => {
            let _ = conn.send(&Response::Error { kind, message }).await;
            return;
        }
    };
    serve_reader(e, conn, from).await
}

/// Starts (or finds) an exec and serves its first reader.
pub(crate) async fn start_and_attach(state: &Shared, conn: Conn, r: ExecSpec) {
    match start(state, r) {
        Ok(e) => serve_reader(e, conn, [0, 0]).await,
        Err((kind, message)) => {
            let _ = conn.send(&Response::Error { kind, message }).await;
        }
    }
}

async fn serve_reader(e: ExecRef, mut conn: Conn, from: [u64; 2]) {
    let reader = {
        let mut ex = e.borrow_mut();
        ex.journal.attach(from)
    };
    let info = e.borrow().info();
    let mut progress = e.borrow().progress.subscribe();
    let w = conn.writer();
    // How long to wait before the disconnect policy applies when this attachment breaks without a goodbye.
    let mut hold = Duration::ZERO;
    if w.send(&Response::Exec(info)).await.is_ok() {
        let mut changed = true;
        loop {
            if changed {
                let snapshot = progress.borrow_and_update().clone();
                if w.send(&Response::Progress(snapshot)).await.is_err() {
                    break;
                }
            }
            changed = tokio::select! {
                r = progress.changed() => if r.is_err() { break } else { true },
                msg = conn.recv::<Request>() => match msg {
                    Ok(Some(Request::Detach)) => {
                        hold = Duration::ZERO;
                        break;
                    }
                    Ok(Some(Request::Hold { grace_ms })) => {
                        hold = Duration::from_millis(grace_ms);
                        false
                    }
                    Ok(Some(m)) => { on_reader_request(&e, reader, m); false }
                    Ok(None) | Err(_) => break,
                },
            };
        }
    }
    let mut ex = e.borrow_mut();
    ex.journal.detach(reader);
    ex.left_at = Instant::now();
    ex.space.notify_waiters();
    if let (0, None, OnDisconnect::Kill { grace_ms }) = (ex.journal.readers(), &ex.end, ex.policy) {
        let e = e.clone();
        tokio::task::spawn_local(async move {
            let grace = Duration::from_millis(grace_ms).max(hold);
            tokio::time::sleep(grace).await;
            let mut ex = e.borrow_mut();
            // Nobody came back, and nobody came and left again since (that reader's own timer decides).
            if ex.journal.readers() == 0 && ex.left_at.elapsed() >= grace {
                ex.kill_for(Ending::Cancelled);
            }
        });
    }
}

fn on_reader_request(e: &ExecRef, reader: hangar_journal::ReaderId, m: Request) {
    let mut ex = e.borrow_mut();
    match m {
        Request::Ack { pos } => {
            ex.journal.ack(reader, pos);
            ex.space.notify_waiters();
        }
        Request::Signal { signal, .. } => {
            let _ = ex.on_signal(signal);
        }
        Request::Resize { rows, cols } => {
            if let Some(pty) = &ex.pty {
                let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
                unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            }
        }
        _ => {}
    }
}

/// Serves a stdin connection: resumes at `offset` (skipping what was already written), then writes each
/// chunk to the process and acknowledges it.
pub(crate) async fn stdin(state: &Shared, mut conn: Conn, exec: &str, offset: u64) {
    let fail = |kind, message: String| Response::Error { kind, message };
    let e = match lookup(state, exec) {
        Ok(e) => e,
        Err((kind, message)) => {
            let _ = conn.send(&fail(kind, message)).await;
            return;
        }
    };
    let sink = e.borrow().stdin.clone();
    let mut sink = sink.lock().await;
    let (acked, open) = (e.borrow().stdin_acked, e.borrow().stdin_open);
    if !open || sink.is_none() {
        let _ = conn.send(&fail(ErrorKind::InvalidArgument, format!("exec {exec}: stdin is closed"))).await;
        return;
    }
    if offset > acked {
        let msg = format!("exec {exec}: stdin offset {offset} is past the {acked} bytes written so far");
        let _ = conn.send(&fail(ErrorKind::InvalidArgument, msg)).await;
        return;
    }
    if conn.send(&Response::StdinAck { acked }).await.is_err() {
        return;
    }
    let mut at = offset;
    let mut buf = Vec::new();
    loop {
        let reply = match conn.recv::<Request>().await {
            Ok(Some(Request::StdinData { len })) => {
                buf.clear();
                if conn
                    .recv_raw(len, |c| {
                        buf.extend_from_slice(c);
                        Ok(())
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let acked = e.borrow().stdin_acked;
                let skip = (acked.saturating_sub(at) as usize).min(buf.len());
                at += len;
                match write_all(sink.as_ref().expect("checked open"), &buf[skip..]).await {
                    Ok(()) => {
                        let mut ex = e.borrow_mut();
                        ex.stdin_acked = ex.stdin_acked.max(at);
                        Response::StdinAck { acked: ex.stdin_acked }
                    }
                    Err(er) => {
                        sink.take();
                        e.borrow_mut().stdin_open = false;
                        let _ = conn
                            .send(&fail(ErrorKind::Other, format!("exec {exec}: stdin closed by the command ({er})")))
                            .await;
                        return;
                    }
                }
            }
            Ok(Some(Request::StdinClose)) => {
                let tty = e.borrow().tty;
                if tty {
                    // A terminal has no end of file of its own: send its EOF character (^D).
                    let _ = write_all(sink.as_ref().expect("checked open"), b"\x04").await;
                } else {
                    sink.take();
                    e.borrow_mut().stdin_open = false;
                }
                let acked = e.borrow().stdin_acked;
                let _ = conn.send(&Response::StdinAck { acked }).await;
                return;
            }
            _ => return,
        };
        if conn.send(&reply).await.is_err() {
            return;
        }
    }
}

async fn write_all(sink: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = sink.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Marks every running exec as ended by the sandbox's end (called as the sandbox shuts down).
pub(crate) fn sandbox_ending(state: &Shared) {
    for e in state.borrow().table.running() {
        e.borrow_mut().killed_for.get_or_insert(Ending::SandboxGone);
    }
}
