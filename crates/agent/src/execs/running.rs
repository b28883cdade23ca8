//! An exec's life after its start: its output pumped into the journal, its end recorded, its journal kept
//! for the retention time.

use super::*;

pub(super) async fn read_some(src: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = src.readable().await?;
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// What a pump reads at first (see [`pump`]).
const FIRST_READ: usize = 16 << 10;

/// Moves one stream's bytes from the process into the journal, pausing while the journal has no room; and into
/// `tee` too, when given (a Pod's container log, for the sandbox's log).
pub(super) async fn pump(
    state: Shared,
    e: ExecRef,
    i: usize,
    src: AsyncFd<OwnedFd>,
    mut exited: watch::Receiver<bool>,
    mut tee: Option<tokio::net::unix::pipe::Sender>,
) {
    // Small at first: most execs print little, and a zeroed 1 MiB buffer per stream per exec cost more than
    // the rest of the pump (memset, page faults, the heap grown and trimmed again). A read that fills it
    // grows it, up to what one append takes.
    let mut buf = vec![0u8; FIRST_READ];
    // A pipe's bytes are moved into the journal by the kernel once its files are made (by the first bytes,
    // read: an exec that prints nothing leaves no files); a terminal's (or a copy for `tee`) pass through
    // `buf`, and so do a pipe's once moving them failed (a full disk: `journal` says what to do then).
    let mut splicing = tee.is_none();
    // The pipe is enlarged (to `PIPE_SIZE`) once its writer shows it writes in bulk, not for every exec.
    let mut enlarged = false;
    let mut enlarge = |n: usize| {
        if !enlarged && n >= FIRST_READ {
            let _ = nix::fcntl::fcntl(src.get_ref(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            enlarged = true;
        }
    };
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
        if splicing && !e.borrow().journal.unmade() {
            let got = tokio::select! {
                r = splice_some(&state, &e, i, &src) => r,
                _ = drained(&mut exited) => break,
            };
            match got {
                Ok(0) => break,
                Ok(n) => enlarge(n),
                Err(_) => splicing = false,
            }
            continue;
        }
        let room = e.borrow().journal.room().min(buf.len());
        let got = tokio::select! {
            r = read_some(&src, &mut buf[..room]) => r,
            _ = drained(&mut exited) => break,
        };
        match got {
            // End of file, or EIO from a terminal whose last holder closed it.
            Ok(0) | Err(_) => break,
            Ok(n) => {
                enlarge(n);
                journal(&state, &e, i, &buf[..n], &exited).await;
                if n == buf.len() && n < hangar_journal::CHUNK {
                    buf.resize((n * 4).min(hangar_journal::CHUNK), 0);
                }
                if let Some(t) = tee.as_mut() {
                    if let Err(er) = tokio::io::AsyncWriteExt::write_all(t, &buf[..n]).await {
                        crate::log!("exec {}: the copy of its output stopped: {er}", e.borrow().id);
                        tee = None;
                    }
                }
            }
        }
    }
}

/// Returns [`DRAIN_IDLE`] after the process ended: a pump stops then even if something it started still
/// holds the pipe open.
async fn drained(exited: &mut watch::Receiver<bool>) {
    let _ = exited.wait_for(|x| *x).await;
    tokio::time::sleep(DRAIN_IDLE).await
}

/// Journals what pipe `src` holds, moved by the kernel ([`hangar_journal::Writer::append_from`]), once it
/// holds something. 0: the pipe's end.
async fn splice_some(state: &Shared, e: &ExecRef, i: usize, src: &AsyncFd<OwnedFd>) -> io::Result<usize> {
    loop {
        let mut guard = src.readable().await?;
        let room = e.borrow().journal.room();
        match guard.try_io(|fd| e.borrow_mut().append_from(i, std::os::fd::AsFd::as_fd(fd.get_ref()), room)) {
            Ok(r) => {
                if e.borrow().id != MAIN_EXEC {
                    state.borrow_mut().table.journals_at_most += *r.as_ref().unwrap_or(&0) as u64;
                }
                return r;
            }
            Err(_would_block) => continue,
        }
    }
}

/// Makes the journal's files with its first byte (see `Writer::lazy`), from the spare when there is one.
fn make_files(state: &Shared, e: &ExecRef) -> io::Result<()> {
    if !e.borrow().journal.unmade() {
        return Ok(());
    }
    let spare = state.borrow_mut().spare_journal.take();
    let taken = spare.is_some();
    let made = e.borrow_mut().journal.make_files(state_dir(), spare);
    if taken {
        super::launch::refill_journal(state);
    }
    made
}

/// Journals what the process wrote. While the journal cannot be written (the host's disk is full) the bytes
/// are kept and the pipe is not read, so the command waits, as for a slow reader; the bytes are given up
/// only [`WRITE_GIVE_UP`] after the process ended.
pub(super) async fn journal(state: &Shared, e: &ExecRef, i: usize, data: &[u8], exited: &watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(10);
    let mut ended_at: Option<Instant> = None;
    loop {
        let lose = ended_at.is_some_and(|t| t.elapsed() >= WRITE_GIVE_UP);
        if lose {
            crate::log!("exec {}: {} bytes given up: the journal could not be written", e.borrow().id, data.len());
        }
        // When the journal's files cannot be made, the append fails as on a full disk, and why is said.
        let made = make_files(state, e);
        let Err(err) = e.borrow_mut().append(i, data, lose) else {
            if e.borrow().id != MAIN_EXEC {
                state.borrow_mut().table.journals_at_most += data.len() as u64;
            }
            return;
        };
        let err = made.err().unwrap_or(err);
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

/// Waits for the process, ends its tree, lets the pumps drain, and records the end.
pub(super) async fn supervise(
    state: Shared,
    e: ExecRef,
    exit: oneshot::Receiver<Reaped>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
    exited: watch::Sender<bool>,
) {
    let reaped = exit.await.ok();
    let ws = reaped.map(|r| r.status);
    let wall = e.borrow().started.elapsed();
    let empty = {
        // The exec owns its tree: whatever it left running ends with it.
        let ex = e.borrow();
        let _ = kill(Pid::from_raw(-ex.pid), Signal::SIGKILL);
        // (Its pid is reaped already: without a cgroup, what left the group and was orphaned is out of reach.)
        ex.cgroup.as_ref().is_some_and(|cg| cg.kill_all() == 0)
    };
    exited.send_replace(true);
    for p in pumps {
        let _ = p.await;
    }
    let mut cgroup = e.borrow_mut().cgroup.take();
    let used = match &mut cgroup {
        Some(cg) if cg.holds_processes() => cg.final_usage(empty),
        // No cgroup of its own (a Pod's agent): what the kernel counted for the process and the children it
        // reaped, and the OOM kills of the sandbox's cgroup while it ran.
        _ => hangar_runtime::cgroups::CgroupUsage {
            oom_kills: hangar_runtime::cgroups::own_oom_kills().saturating_sub(e.borrow().oom_kills_before),
            ..reaped.map(|r| r.usage).unwrap_or_default()
        },
    };
    let (code, signal) = crate::state::exit_of(ws);
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
        if ex.id == MAIN_EXEC {
            persist_log(&ex);
        }
        ex.stdin.clone()
    };
    if let Ok(mut s) = stdin.try_lock() {
        s.take();
    }
    state.borrow_mut().live_execs -= 1;
    // With the end, before anything that waits: whoever sees this exec ended sees the budget kept too.
    keep_within_budget(&state);
    // The next spare is prepared after this exec, not while it ran: its cgroup migration briefly holds a lock
    // that process exits wait for, which would slow the exec it was meant to speed up.
    super::launch::refill_spare_when_quiet(&state);
    // After the end is out: the cgroup, once empty, is kept for a later exec (reset), or removed (that takes the
    // kernel ~10 ms: off the agent's thread). Its readers' tasks send the end first (ten system calls of
    // recycling used to go before it); then the CPU goes to whoever the end woke on it (the reader, which a
    // send on a local socket wakes where the sender runs) before the recycling.
    tokio::task::yield_now().await;
    // SAFETY: no preconditions.
    unsafe { libc::sched_yield() };
    if let Some(mut cg) = cgroup {
        for _ in 0..1000 {
            if empty || cg.kill_all() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let kept = {
            let st = state.borrow();
            !st.stopping && st.spare_cgroups.len() < MAX_SPARE_CGROUPS
        };
        if kept && cg.recycle() {
            state.borrow_mut().spare_cgroups.push(cg);
        } else {
            let _ = tokio::task::spawn_blocking(move || cg.remove(Duration::from_millis(500))).await;
        }
    }
    retain(state, e).await;
}

/// Keeps the sandbox's exec journals within their budget (`Workload::journal_budget`): past it, the journals
/// of ended execs nobody is reading are expired early, oldest first, as their retention would have.
pub(super) fn keep_within_budget(state: &Shared) {
    let mut st = state.borrow_mut();
    let budget = st.cfg.journal_budget.unwrap_or(hangar_types::DEFAULT_JOURNAL_BUDGET);
    // Without this, every exec's end walked every retained exec: 5% of the agent's time at 4,000 of them.
    if st.table.journals_at_most <= budget {
        return;
    }
    let held = |e: &ExecRef| {
        let ex = e.borrow();
        if ex.expired || ex.id == MAIN_EXEC {
            0
        } else {
            ex.journal.retained_bytes()
        }
    };
    let mut total: u64 = st.table.order.iter().map(held).sum();
    for e in &st.table.order {
        if total <= budget {
            break;
        }
        let bytes = held(e);
        let mut ex = e.borrow_mut();
        if ex.end.is_none() || bytes == 0 || ex.journal.readers() > 0 {
            continue;
        }
        crate::log!(
            "exec {}: its journal ({bytes} bytes) expired early: the sandbox's journals exceed {budget}",
            ex.id
        );
        ex.expired = true;
        hangar_journal::Writer::remove(state_dir(), &ex.id);
        total -= bytes;
    }
    st.table.journals_at_most = total;
    st.table.forget_expired();
}

/// The sandbox's log is read after the agent is gone too: its end and gaps go to disk with it (unless nothing
/// of it is on disk: the empty log of a sandbox without a main command).
pub(super) fn persist_log(ex: &Exec) {
    if ex.journal.unmade() {
        return;
    }
    if let Err(err) = hangar_journal::persist(state_dir(), MAIN_EXEC, &ex.journal.progress(ex.end.clone())) {
        crate::log!("the sandbox's log: {err}");
    }
}

/// Keeps the journal until the exec ended, nobody is attached, and its retention has passed; then deletes it.
pub(super) async fn retain(state: Shared, e: ExecRef) {
    loop {
        let (attached, due) = {
            let ex = e.borrow();
            let since = ex.ended.map_or(ex.left_at, |t| t.max(ex.left_at));
            // A retention too long to represent (the main command's) never ends.
            let Some(due) = since.checked_add(ex.retain) else { return };
            (ex.journal.readers() > 0, due)
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
