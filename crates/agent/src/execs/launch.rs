//! Starting an exec: its request checked, its pipes or terminal, its cgroup, and the hand-off to a spare
//! helper (or a direct start when none is waiting).

use super::*;
use hangar_types::StartFailureKind;

/// Checks the request; the working directory it names, resolved inside the sandbox.
pub(super) fn validate(state: &Shared, r: &ExecSpec) -> Result<OwnedFd, (ErrorKind, String)> {
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
    // Streamed: the journal holds what clients have not read yet, not a copy of everything they have.
    let cap = r.journal_cap.unwrap_or(DEFAULT_CAP);
    // Its files are made with its first byte (`running::journal`), from the spare made ahead when there is one.
    let journal = hangar_journal::Writer::lazy(&id, cap).streamed(hangar_journal::STREAMED);
    let exec =
        Exec::new(id.clone(), r.argv.clone(), journal, &r.output, r.on_disconnect, r.retain.unwrap_or(DEFAULT_RETAIN));
    {
        let mut st = state.borrow_mut();
        st.table.insert(exec.clone());
    }
    let spawned = spawn(state, &exec, &r, &cwd);
    // From a sandbox's second exec on, a journal is made ahead for the next exec that prints (at its first byte it
    // would be on its path). Not before: a sandbox that runs one command (`hangar run`) or none would only pay
    // for it (a thread in every idle agent, ~28 KiB per sandbox at 1,000; three more entries to remove).
    let started = {
        let mut st = state.borrow_mut();
        st.execs_started += 1;
        st.execs_started
    };
    if started >= 2 {
        refill_journal(state);
    }
    match spawned {
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

impl Exec {
    fn new(
        id: String,
        argv: Vec<String>,
        journal: hangar_journal::Writer,
        output: &Output,
        policy: OnDisconnect,
        retain: Duration,
    ) -> ExecRef {
        Rc::new(RefCell::new(Exec {
            id,
            argv,
            pid: 0,
            started_at_ms: hangar_types::now_ms(),
            started: Instant::now(),
            tty: output.is_pty(),
            merged: *output == Output::Merged,
            journal,
            times: None,
            progress: watch::channel(Progress::default()).0,
            space: Rc::new(Notify::new()),
            stdin: Rc::new(tokio::sync::Mutex::new(None)),
            stdin_open: false,
            stdin_acked: 0,
            pty: None,
            cgroup: None,
            oom_kills_before: 0,
            killed_for: None,
            end: None,
            ended: None,
            expired: false,
            policy,
            retain,
            left_at: Instant::now(),
        }))
    }
}

/// Journals the sandbox's main command (already started as `pid`, writing both its streams into the pipe
/// `output` reads) as the exec [`MAIN_EXEC`]: its output is the sandbox's log, kept for as long as the
/// sandbox's state directory, and its end is published like any exec's. A sandbox without a main command
/// (`None`) has an empty log, which ends with the sandbox ([`end_idle_main`]). `tee`, when given, gets a copy of
/// the log (a Pod's container log, which Kubernetes keeps after the agent is gone). Call before the reaper
/// first runs.
pub(crate) fn adopt_main(
    state: &Shared,
    main: Option<(i32, OwnedFd, ExecCgroup)>,
    tee: Option<OwnedFd>,
) -> io::Result<()> {
    let argv = state.borrow().cfg.main.clone();
    let cap = hangar_types::LOG_JOURNAL_CAP;
    // Without a main command the log stays empty: nothing of it is ever on disk (the engine knows such a log
    // from the sandbox's record), which spares every such sandbox four files to make and remove.
    let journal = match main {
        Some(_) => hangar_journal::Writer::create(state_dir(), MAIN_EXEC, cap)?,
        None => hangar_journal::Writer::lazy(MAIN_EXEC, cap),
    };
    let exec = Exec::new(MAIN_EXEC.into(), argv, journal, &Output::Merged, OnDisconnect::Keep, Duration::MAX);
    {
        let mut st = state.borrow_mut();
        st.table.insert(exec.clone());
    }
    let Some((pid, output, cgroup)) = main else { return Ok(()) };
    exec.borrow_mut().times = Some(hangar_journal::TimeWriter::create(state_dir(), MAIN_EXEC)?);
    {
        let mut e = exec.borrow_mut();
        e.pid = pid;
        e.cgroup = Some(cgroup);
        e.on_started();
    }
    let exit_rx = expect_exit(state, pid);
    state.borrow_mut().live_execs += 1;
    let (exited_tx, exited_rx) = watch::channel(false);
    let tee = match tee.map(tokio::net::unix::pipe::Sender::from_owned_fd).transpose() {
        Ok(tee) => tee,
        Err(e) => {
            crate::log!("the sandbox's log is not copied ({e}): a pipe or FIFO is needed");
            None
        }
    };
    let pump = tokio::task::spawn_local(pump(state.clone(), exec.clone(), 0, nonblocking(output)?, exited_rx, tee));
    tokio::task::spawn_local(supervise(state.clone(), exec, exit_rx, vec![pump], exited_tx));
    Ok(())
}

/// How the sandbox's log ended, once it did.
pub(crate) fn main_end(state: &Shared) -> Option<ExecEnd> {
    lookup(state, MAIN_EXEC).ok()?.borrow().end.clone()
}

/// The end of the (empty) log of a sandbox without a main command: it ended with the sandbox.
pub(crate) fn end_idle_main(state: &Shared) {
    let Ok(e) = lookup(state, MAIN_EXEC) else { return };
    let mut ex = e.borrow_mut();
    if ex.pid != 0 || ex.end.is_some() {
        return;
    }
    ex.end = Some(ExecEnd::sandbox_gone([0, 0]));
    ex.ended = Some(Instant::now());
    ex.journal.close();
    ex.publish();
    super::running::persist_log(&ex);
}

/// Starts the process with its pipes (or terminal) and cgroup, and the tasks that journal and supervise it.
/// On failure: why, typed.
pub(super) fn spawn(state: &Shared, exec: &ExecRef, r: &ExecSpec, cwd: &OwnedFd) -> Result<(), StartFailure> {
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
    let stdio: [Rc<OwnedFd>; 3] = if let Output::Pty { rows, cols } = r.output {
        let ws = nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| io_err("openpty", e.into()))?;
        for fd in [&pty.master, &pty.slave] {
            set_cloexec(fd);
        }
        let dup = |f: &OwnedFd| f.try_clone().map_err(|e| io_err("dup pty", e));
        stdin_sink = Some(dup(&pty.master)?);
        pty_ctl = Some(dup(&pty.master)?);
        let slave = [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave].map(Rc::new);
        sources.push(pty.master);
        slave
    } else {
        // (Enlarged by their pumps once a writer proves fast: most execs print little.)
        let (out_r, out_w) = pipe().map_err(|e| io_err("pipe", e))?;
        sources.push(out_r);
        let err_w = if r.output == Output::Merged {
            out_w.try_clone().map_err(|e| io_err("dup", e))?
        } else {
            let (err_r, err_w) = pipe().map_err(|e| io_err("pipe", e))?;
            sources.push(err_r);
            err_w
        };
        let stdin = if r.stdin {
            let (in_r, in_w) = pipe().map_err(|e| io_err("pipe", e))?;
            stdin_sink = Some(in_w);
            Rc::new(in_r)
        } else {
            state.borrow().devnull.clone()
        };
        [stdin, Rc::new(out_w), Rc::new(err_w)]
    };
    let order = Order { argv: r.argv.clone(), env, user, tty: r.output.is_pty() };
    let with = || Handover { stdio: stdio.each_ref().map(|fd| &**fd), cwd };
    let spare = state.borrow_mut().spare.take();
    let started = match spare {
        Some(spare) => give_to_helper(state, spare, &order, with()),
        None => None,
    };
    let started = match started {
        Some(started) => started,
        // No spare (or it was unusable): started from the agent, paying the cgroup migration on this path.
        None => {
            // An earlier exec's, emptied and recycled (see `supervise`), else a new one.
            let recycled = state.borrow_mut().spare_cgroups.pop();
            let cgroup = recycled.or_else(|| state.borrow().table.cgroups.create_exec(&format!("exec-{id}")).ok());
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
        e.on_started();
    }
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    for (i, src) in sources.into_iter().enumerate() {
        let src = nonblocking(src).map_err(|e| io_err("output", e))?;
        pumps.push(tokio::task::spawn_local(pump(state.clone(), exec.clone(), i, src, exited_rx.clone(), None)));
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

pub(super) type Started = (i32, oneshot::Receiver<Reaped>, Option<ExecCgroup>);

/// Registers `pid` with the reaper (before it can possibly exit unseen: same thread, no await in between).
pub(super) fn expect_exit(state: &Shared, pid: i32) -> oneshot::Receiver<Reaped> {
    let (tx, rx) = oneshot::channel();
    state.borrow_mut().waiters.insert(pid, tx);
    rx
}

/// Hands the order to a waiting helper. `None` when the helper turned out unusable; `Some(Err)` when the
/// command cannot be executed.
pub(super) fn give_to_helper(
    state: &Shared,
    mut helper: Spare,
    order: &Order,
    with: Handover<'_>,
) -> Option<io::Result<Started>> {
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

/// Whether this agent keeps spares at all. A spare only takes the cgroup migration off the exec's path: without
/// exec cgroups (a Pod), or where moves are cheap (cgroup v1, or v2 with the host's favordynmods), it saves
/// nothing and costs a process.
fn spares_wanted(st: &crate::state::State) -> bool {
    !st.spare_unusable
        && !st.table.cgroups.is_empty()
        && crate::server::SPARE_HELPERS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prepares the next spare in the background (its cgroup migration off every exec's path).
fn refill_spare(state: &Shared) {
    let cgroup = {
        let mut st = state.borrow_mut();
        let resting = st.spare_failed.is_some_and(|t| t.elapsed() < SPARE_RETRY);
        if st.spare.is_some() || st.spare_pending || resting || st.stopping || !spares_wanted(&st) {
            return;
        }
        st.spare_count += 1;
        let recycled = st.spare_cgroups.pop();
        match recycled.map_or_else(|| st.table.cgroups.create_exec(&format!("exec-s{}", st.spare_count)), Ok) {
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

/// Prepares the next spare once no exec has started for [`SPARE_AFTER_QUIET`] after this point (an exec's end).
///
/// A spare saves an exec the wait for an RCU grace period (5–35 ms) that a process's cgroup move costs after a
/// quiet spell. Migrations that follow one another within ~10 ms are cheap (~0.1 ms), so back-to-back execs
/// start directly at no such cost; a spare prepared between them only competed with them for the CPU and the
/// migration lock. Measured with 500 × `exec true` from the SDK: p50 1.62–1.74 ms with a spare prepared after
/// every exec, 1.32–1.42 ms with none; with 50 ms between execs, 2.4 ms with a spare and 8.9 ms without (moves
/// through `cgroup.procs`; on v1 execs now move themselves through `tasks`, and need no spare).
pub(super) fn refill_spare_when_quiet(state: &Shared) {
    // (Where no spares are kept, which is the default on cgroup v1, no timer either: this runs after every exec.)
    if !spares_wanted(&state.borrow()) {
        return;
    }
    let started = state.borrow().execs_started;
    let state = state.clone();
    tokio::task::spawn_local(async move {
        tokio::time::sleep(SPARE_AFTER_QUIET).await;
        if state.borrow().execs_started == started {
            refill_spare(&state);
        }
    });
}

/// Why `prog` could not be started, from the error of its exec (or of the fork before it).
pub(crate) fn start_failure(prog: &str, e: &std::io::Error) -> StartFailure {
    use StartFailureKind as K;
    let (kind, message) = match (e.kind(), e.raw_os_error()) {
        (std::io::ErrorKind::NotFound, _) => (K::NotFound, format!("command not found: {prog}")),
        (std::io::ErrorKind::PermissionDenied, _) => {
            (K::PermissionDenied, format!("permission denied: {prog} is not executable"))
        }
        (_, Some(libc::ENOEXEC)) => (K::NotExecutable, format!("cannot run {prog}: not an executable format")),
        (_, Some(libc::EAGAIN)) => {
            (K::ResourceLimit, format!("cannot start {prog}: the sandbox's process limit (pids) is reached"))
        }
        (_, Some(libc::ENOMEM | libc::EMFILE | libc::ENFILE)) => {
            (K::ResourceLimit, format!("cannot start {prog}: {e}"))
        }
        _ => (K::Other, format!("cannot start {prog}: {e}")),
    };
    StartFailure::new(kind, message)
}

/// Makes an empty journal for the next exec in the background, unless one is there or being made.
pub(super) fn refill_journal(state: &Shared) {
    {
        let mut st = state.borrow_mut();
        if st.spare_journal.is_some() || st.spare_journal_pending || st.stopping {
            return;
        }
        st.spare_journal_pending = true;
    }
    let state = state.clone();
    tokio::task::spawn_local(async move {
        let made = tokio::task::spawn_blocking(|| hangar_journal::Spare::make(state_dir())).await;
        let mut st = state.borrow_mut();
        st.spare_journal_pending = false;
        // (Should it fail, the next exec makes its journal itself, and says why if that fails too.)
        st.spare_journal = made.ok().and_then(Result::ok);
    });
}
