//! The agent's life: build the sandbox, start the main command, serve the engine, reap, stop.

use crate::confined::SandboxRoot;
use crate::execs::{start_failure, Table};
use crate::spare::{Handover, Order};
use crate::state::{set_cloexec, Shared, State, STATE_DIR_FD};
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{
    AgentConfig, EndReason, EndRecord, ErrorKind, Request, Response, StartReport, Workload, END_RECORD_FILE, VERSION,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::SockFlag;
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Descriptor numbers the runtime places the agent's inherited resources at (see `hangar_runtime::AgentFds`).
const LISTENER_FD: i32 = 3;
const STATUS_FD: i32 = 4;
const CONFIG_FD: i32 = 6;
const CHUNK: usize = 256 * 1024;

/// Entry point of the `hangar-agent` binary, as started by `hangar_runtime::spawn_agent` (its configuration on
/// descriptor 6), or as a Pod's first process (`hangar-agent pod`, see `crate::pod`). Never returns.
pub fn run() -> ! {
    if std::env::args().nth(1).as_deref() == Some(crate::spare::HELPER_ARG) {
        crate::spare::helper();
    }
    if std::env::args().nth(1).as_deref() == Some(hangar_agent_protocol::NETD_ARG) {
        let dir = std::env::args_os().nth(2).unwrap_or_default();
        crate::netd::run(std::path::Path::new(&dir));
    }
    if std::env::args().nth(1).as_deref() == Some(hangar_agent_protocol::PUBLISH_ARG) {
        crate::netd::publish(&std::env::args().skip(2).collect::<Vec<_>>());
    }
    if std::env::args().nth(1).as_deref() == Some(hangar_agent_protocol::INSTALL_ARG) {
        let dest = std::env::args_os().nth(2).unwrap_or_default();
        match crate::pod::install(std::path::Path::new(&dest)) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                crate::log!("{e}");
                std::process::exit(1)
            }
        }
    }
    let pod = std::env::args().nth(1).as_deref() == Some(hangar_agent_protocol::POD_ARG);
    // One malloc arena: the agent allocates on its event loop; a thread of the blocking pool (a spare being
    // prepared) would otherwise get an arena of its own to keep.
    // SAFETY: mallopt only sets a malloc parameter; nothing has started another thread yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let code = match if pod { crate::pod::main() } else { main_inner() } {
        Ok(()) => 0,
        Err(e) => {
            crate::log!("{e}");
            1
        }
    };
    std::process::exit(code)
}

fn main_inner() -> Result<(), String> {
    // Host-side descriptors must never leak into sandbox processes.
    for fd in [LISTENER_FD, STATUS_FD, STATE_DIR_FD] {
        // SAFETY: the runtime placed these descriptors; we only borrow them to set a flag.
        set_cloexec(&unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
    }
    // SAFETY: the runtime placed the configuration file at this number; nothing else owns it.
    let mut config = unsafe { File::from_raw_fd(CONFIG_FD) };
    let mut body = Vec::new();
    config.read_to_end(&mut body).map_err(|e| format!("read the configuration: {e}"))?;
    drop(config);
    let cfg: AgentConfig = serde_json::from_slice(&body).map_err(|e| format!("parse the configuration: {e}"))?;
    // SAFETY: the runtime placed the write end of the status pipe at this number; nothing else owns it.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    SPARE_HELPERS.store(cfg.spare_helpers, std::sync::atomic::Ordering::Relaxed);
    let started = hangar_runtime::enter(&cfg.sandbox)
        .map_err(|e| StartReport::Failed(e.to_string()))
        .and_then(|cgroups| Started::start(&cfg.workload, cgroups));
    let started = match started {
        Ok(started) => started,
        Err(report) => {
            let _ = writeln!(status, "{}", report.line());
            return Err(report.line());
        }
    };
    let _ = writeln!(status, "{}", StartReport::Ready { main_pid: started.main_pid(), version: VERSION }.line());
    drop(status);
    on_event_loop(async {
        // SAFETY: the runtime placed the listening control socket at this number; nothing else owns it.
        let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) };
        std_listener.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
        // SAFETY: the AsyncFd owns the listener for as long as it is registered.
        let listener = unsafe { AsyncFd::register_with_interest(std_listener, tokio::io::Interest::READABLE) }
            .map_err(|e| format!("listener: {e}"))?;
        serve(cfg.workload, started, Incoming::Unix(listener)).await
    })
}

/// Runs `serve` on the agent's event loop, one thread, until it returns.
///
/// Memory an idle agent keeps counts once per sandbox: the loop reads up to 64 events a turn (it waits on a
/// handful of descriptors), not tokio's 1024 (a 12 KiB buffer); and the future is boxed, as `block_on` moves
/// it through several calls, each a copy on the stack (12 KiB of stack pages the agent would keep for good).
pub(crate) fn on_event_loop(serve: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_io_events_per_tick(64)
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let served = rt.block_on(Box::pin(serve));
    // A blocking task (a spare being prepared) must not hold up the agent's exit.
    rt.shutdown_background();
    served
}

/// What the agent started in a sandbox that is built: its root, its user, its main command, its execs' table.
pub(crate) struct Started {
    root: SandboxRoot,
    user: Option<(u32, u32)>,
    main: Option<Main>,
    table: Table,
    /// Where a copy of the main command's output goes besides its journal (a Pod's container log).
    pub(crate) main_copy: Option<OwnedFd>,
    /// `/dev/null`, opened before anything of the workload ran (see `State::devnull`).
    devnull: OwnedFd,
}

impl Started {
    /// Starts `workload`'s main command (if it has one) in the sandbox the agent is in now.
    pub(crate) fn start(
        workload: &Workload,
        cgroups: hangar_runtime::cgroups::CgroupDirs,
    ) -> Result<Self, StartReport> {
        let root = SandboxRoot::open(&workload.workdir)
            .map_err(|e| StartReport::Failed(format!("open the sandbox's root: {e}")))?;
        let user = resolve_user(&root, &workload.user).map_err(StartReport::Failed)?;
        let devnull = File::open("/dev/null").map_err(|e| StartReport::Failed(format!("/dev/null: {e}")))?.into();
        let main = match workload.main.is_empty() {
            true => None,
            false => Some(spawn_main(workload, &root, &cgroups, user, &devnull)?),
        };
        Ok(Self { root, user, main, table: Table::new(cgroups), main_copy: None, devnull })
    }

    /// The main command's pid (0 without one).
    pub(crate) fn main_pid(&self) -> i32 {
        self.main.as_ref().map_or(0, |m| m.pid)
    }
}

/// Where the engine's connections come from: the unix socket the runtime gave the agent (local backend), or
/// the streams of a Pod's agent (each carrying many connections, see `hangar_agent_protocol::remote`).
pub(crate) enum Incoming {
    Unix(AsyncFd<std::os::unix::net::UnixListener>),
    Remote(tokio::sync::mpsc::Receiver<Conn>),
}

impl Incoming {
    async fn next(&mut self) -> Option<Conn> {
        match self {
            Incoming::Unix(l) => loop {
                let Ok(mut ready) = l.readable().await else { continue };
                // Nonblocking and close-on-exec from the start (one system call).
                let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
                match ready.try_io(|l| {
                    nix::sys::socket::accept4(std::os::fd::AsRawFd::as_raw_fd(l.get_ref()), flags).map_err(Into::into)
                }) {
                    Ok(Ok(fd)) => {
                        // SAFETY: accept4 returned a new connected socket that nothing else owns.
                        let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
                        if let Ok(conn) = Conn::from_socket(stream) {
                            return Some(conn);
                        }
                    }
                    Ok(Err(_)) | Err(_) => continue,
                }
            },
            Incoming::Remote(rx) => rx.recv().await,
        }
    }
}

/// The image's user as (uid, gid), looked up in the sandbox's own /etc/passwd and /etc/group.
fn resolve_user(root: &SandboxRoot, spec: &str) -> Result<Option<(u32, u32)>, String> {
    if spec.is_empty() {
        return Ok(None);
    }
    let (user, group) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        root.read_small(file)?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            Some((f.get(2)?.parse().ok()?, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0)))
        })
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, lookup_by_uid(root, uid).unwrap_or(uid)),
        Err(_) => {
            lookup("/etc/passwd", user).ok_or_else(|| format!("user {user:?} of the image is not in /etc/passwd"))?
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("/etc/group", g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| format!("group {g:?} of the image is not in /etc/group"))?,
        },
    };
    Ok(Some((uid, gid)))
}

fn lookup_by_uid(root: &SandboxRoot, uid: u32) -> Option<u32> {
    root.read_small("/etc/passwd")?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.get(2)?.parse::<u32>().ok()? != uid {
            return None;
        }
        f.get(3)?.parse().ok()
    })
}

/// The started main command: its pid, the pipe its output comes out of, its cgroup.
struct Main {
    pid: i32,
    output: OwnedFd,
    cgroup: hangar_runtime::cgroups::ExecCgroup,
}

/// Starts the main command (see `spare::start_directly`), in a cgroup of its own in the workload's, stdin
/// `/dev/null`, stdout and stderr one pipe (its log keeps the order lines were written in).
fn spawn_main(
    cfg: &Workload,
    root: &SandboxRoot,
    cgroups: &hangar_runtime::cgroups::CgroupDirs,
    user: Option<(u32, u32)>,
    null: &OwnedFd,
) -> Result<Main, StartReport> {
    let failed = StartReport::Failed;
    let prog = cfg.main.first().ok_or_else(|| failed("the sandbox's command is empty".into()))?;
    let cgroup =
        cgroups.create_exec("main").map_err(|e| failed(format!("cannot make the main command's cgroup: {e}")))?;
    let cwd = root.open_dir(&cfg.workdir).map_err(|(_, m)| failed(m))?;
    let (output, input) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| failed(format!("the main command's output pipe: {e}")))?;
    let _ = nix::fcntl::fcntl(&input, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    let order = Order { argv: cfg.main.clone(), env: cfg.env.clone(), user, tty: false };
    let with = Handover { stdio: [null, &input, &input], cwd: &cwd };
    let pid = crate::spare::start_directly(&order, with, Some(&cgroup))
        .map_err(|e| StartReport::CommandFailed(start_failure(prog, &e)))?;
    Ok(Main { pid, output, cgroup })
}

pub(crate) async fn serve(cfg: Workload, started: Started, mut incoming: Incoming) -> Result<(), String> {
    let Started { root, user, main, table, main_copy, devnull } = started;
    let mut sigchld =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).map_err(|e| e.to_string())?;
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    let lifetime = Duration::from_millis(cfg.lifetime_ms);
    let grace = Duration::from_millis(cfg.stop_grace_ms);
    let fired = EndRecord { reason: EndReason::LifetimeExceeded, code: None, signal: Some(libc::SIGKILL), log: None };
    crate::watchdog::arm(lifetime + grace + WATCHDOG_SLACK, serde_json::to_vec(&fired).unwrap_or_default());
    // The agent's signal handling is complete (tokio's handlers above, the watchdog's, std's): commands
    // reset just these.
    hangar_runtime::note_signal_dispositions();
    reserve_end_record();
    let state: Shared = Rc::new(RefCell::new(State {
        cfg,
        root,
        user,
        devnull: Rc::new(devnull),
        main_pid: main.as_ref().map_or(0, |m| m.pid),
        waiters: HashMap::new(),
        main_status: None,
        stopping: false,
        live_execs: 0,
        inline_readers: 0,
        table,
        spare: None,
        spare_pending: false,
        spare_failed: None,
        spare_unusable: false,
        spare_count: 0,
        spare_journal: None,
        spare_journal_pending: false,
        spare_cgroups: Vec::new(),
        execs_started: 0,
    }));
    let main_exited = Rc::new(Notify::new());
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            // Before the first reap, so that the main command's exit reaches its log's end too.
            if let Err(e) = crate::execs::adopt_main(&state, main.map(|m| (m.pid, m.output, m.cgroup)), main_copy) {
                crate::log!("the main command's output cannot be journaled: {e}");
            }
            reap(&state, &main_exited);
            // No spare exec helper yet: a sandbox that runs no exec never pays for one (~200 KiB of memory and a
            // process); the first exec follows its sandbox's own cgroup migrations closely and starts directly
            // at little cost, and the spare comes once execs pause (`execs::refill_spare_when_quiet`).
            let lifetime_end = tokio::time::sleep(lifetime);
            tokio::pin!(lifetime_end);
            loop {
                tokio::select! {
                    _ = sigchld.recv() => reap(&state, &main_exited),
                    // During a requested stop the main command's end is part of the stop, not its reason.
                    _ = main_exited.notified(), if !state.borrow().stopping => {
                        shutdown(&state, &main_exited, Duration::ZERO, EndReason::Exited).await;
                        return Ok(());
                    }
                    _ = &mut lifetime_end => {
                        shutdown(&state, &main_exited, grace, EndReason::LifetimeExceeded).await;
                        return Ok(());
                    }
                    _ = sigterm.recv() => {
                        shutdown(&state, &main_exited, grace, EndReason::Stopped).await;
                        return Ok(());
                    }
                    conn = incoming.next() => {
                        let Some(conn) = conn else {
                            // Nobody can reach this sandbox any more: it ends as if stopped.
                            shutdown(&state, &main_exited, grace, EndReason::Stopped).await;
                            return Ok(());
                        };
                        let (state, main_exited) = (state.clone(), main_exited.clone());
                        tokio::task::spawn_local(async move { handle(state, main_exited, conn).await });
                    }
                }
            }
        })
        .await
}

/// How long after the lifetime and grace the watchdog waits for the normal shutdown before it acts.
const WATCHDOG_SLACK: Duration = Duration::from_secs(5);

/// Collects every exited child: execs get their status, the main command's end starts the shutdown,
/// orphans re-parented to us are simply reaped.
fn reap(state: &Shared, main_exited: &Notify) {
    loop {
        match crate::state::reap_one() {
            Ok(None) | Err(_) => return,
            Ok(Some(reaped)) => {
                let Some(pid) = reaped.status.pid() else { continue };
                let mut st = state.borrow_mut();
                if pid.as_raw() == st.main_pid {
                    st.main_status = Some(reaped.status);
                    main_exited.notify_one();
                }
                // The main command has a waiter too: its log's end.
                if let Some(tx) = st.waiters.remove(&pid.as_raw()) {
                    let _ = tx.send(reaped);
                }
            }
        }
    }
}

/// Ends the sandbox: SIGTERM to everyone, SIGKILL after `grace` (or as soon as the main command is gone),
/// wait until no process is left, record how it ended.
async fn shutdown(state: &Shared, main_exited: &Notify, grace: Duration, reason: EndReason) -> EndRecord {
    if std::mem::replace(&mut state.borrow_mut().stopping, true) {
        // Another shutdown is under way and ends the process; this caller just waits for it.
        return std::future::pending().await;
    }
    crate::execs::sandbox_ending(state);
    // What the grace waits for: the main command's end, or, in a sandbox without one, everyone's (a look
    // that reaps nothing: the reaper hands each status to its waiter).
    let waiting = |state: &Shared| match state.borrow().main_pid {
        0 => {
            let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            !matches!(nix::sys::wait::waitid(nix::sys::wait::Id::All, peek), Err(nix::errno::Errno::ECHILD))
        }
        _ => state.borrow().main_status.is_none(),
    };
    if waiting(state) && !grace.is_zero() {
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        while tokio::time::Instant::now() < deadline {
            reap(state, main_exited);
            if !waiting(state) {
                break;
            }
            let tick = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(20)));
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! { _ = s.recv() => {}, _ = tick => {} }
                }
                None => tick.await,
            }
        }
    }
    // Everyone left, including the main command if it ignored SIGTERM, and anything started meanwhile
    // (a spare exec helper being prepared on another thread).
    loop {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap(state, main_exited);
        // A look that reaps nothing (what exited is the reaper's, for its waiters).
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        if let Err(nix::errno::Errno::ECHILD) = nix::sys::wait::waitid(nix::sys::wait::Id::All, peek) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Let exec connections report their (killed) processes before the agent goes.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while state.borrow().live_execs > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // And inline readers to have taken their execs' ends (each hangs up once it has).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while state.borrow().inline_readers > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    crate::execs::end_idle_main(state);
    let log = crate::execs::main_end(state);
    let (main_pid, main) = (state.borrow().main_pid, state.borrow().main_status);
    // A sandbox without a main command has no status to report.
    let (code, signal) = if main_pid == 0 { (None, None) } else { crate::state::exit_of(main) };
    let end = EndRecord { reason, code, signal, log };
    record_end(&end);
    end
}

/// The file the end record is written to before it is renamed into place.
const END_RECORD_TMP: &str = "exit.json.tmp";

/// Allocates the end record's file now, while there is room: a workload that fills its disk budget must not
/// keep the agent from recording how the sandbox ended.
fn reserve_end_record() {
    use nix::fcntl::{openat, OFlag};
    // SAFETY: the runtime placed the state directory at this number; we only borrow it.
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(STATE_DIR_FD) };
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
    if let Ok(fd) = openat(dir, END_RECORD_TMP, flags, nix::sys::stat::Mode::from_bits_truncate(0o644)) {
        let _ = nix::fcntl::fallocate(&fd, nix::fcntl::FallocateFlags::empty(), 0, 4096);
    }
}

/// Whether a spare exec helper is kept ready ([`AgentConfig::spare_helpers`]); without, execs start straight
/// from the agent.
pub(crate) static SPARE_HELPERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Where a Pod's agent also leaves its sandbox's end (see `crate::pod`): the container's termination message,
/// which Kubernetes keeps in the Pod's status after the container is gone.
pub(crate) static TERMINATION_LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn record_end(rec: &EndRecord) {
    write_end(&serde_json::to_vec(rec).unwrap_or_default());
}

/// Writes an end record (`body`, rendered) where the engine (and a Pod's termination message) finds it.
/// Allocates nothing: the watchdog's signal handler calls it too (`crate::watchdog`).
pub(crate) fn write_end(body: &[u8]) {
    if let Some(path) = TERMINATION_LOG.get() {
        let _ = std::fs::write(path, body);
    }
    use nix::fcntl::{openat, renameat, OFlag};
    use nix::sys::stat::Mode;
    use std::os::unix::fs::FileExt;
    // SAFETY: the runtime placed the state directory at this number; we only borrow it.
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(STATE_DIR_FD) };
    // Written into the reserved block (no O_TRUNC, which would free it), then cut to length.
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
    if let Ok(fd) = openat(dir, END_RECORD_TMP, flags, Mode::from_bits_truncate(0o644)) {
        let f = File::from(fd);
        // Not synced: the engine copies the end into its store as soon as the agent is gone, and a host that
        // crashes before that ends every sandbox anyway (a flush here cost every stop 2 ms).
        let written = f.write_all_at(body, 0).and_then(|()| f.set_len(body.len() as u64));
        if written.is_ok() {
            let _ = renameat(dir, END_RECORD_TMP, dir, END_RECORD_FILE);
        }
    }
}

async fn handle(state: Shared, main_exited: Rc<Notify>, mut conn: Conn) {
    let mut req = match conn.recv::<Request>().await {
        Ok(Some(r)) => r,
        _ => return,
    };
    let inline = matches!(req, Request::Inline);
    if inline {
        req = match conn.recv::<Request>().await {
            Ok(Some(r)) => r,
            _ => return,
        };
    }
    let reply = match req {
        Request::Ping => Response::Pong { main_pid: state.borrow().main_pid },
        Request::Exec(r) => return crate::execs::start_and_attach(&state, conn, r, inline).await,
        Request::Attach { exec, from } => return crate::execs::attach(&state, conn, &exec, from, inline).await,
        Request::Stdin { exec, offset } => return crate::execs::stdin(&state, conn, &exec, offset).await,
        Request::ListExecs => crate::execs::list(&state),
        Request::Signal { exec, signal } => crate::execs::signal(&state, &exec, signal),
        Request::ReadFile { path } => return read_file(&state, conn, &path).await,
        Request::WriteFile { path, len, mode } => write_file(&state, &mut conn, &path, len, mode).await,
        Request::Stop { grace_ms } => {
            let end = shutdown(&state, &main_exited, Duration::from_millis(grace_ms), EndReason::Stopped).await;
            let _ = conn.send(&Response::Stopped(end)).await;
            // Until the engine read it and hung up: over a remote stream the answer is only on its way when
            // the write returns.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.recv::<Request>()).await;
            std::process::exit(0);
        }
        Request::Ack { .. }
        | Request::Detach
        | Request::Hold { .. }
        | Request::Resize { .. }
        | Request::StdinData { .. }
        | Request::StdinClose
        | Request::Inline
        | Request::SeekTail { .. }
        | Request::SeekSince { .. } => {
            err(ErrorKind::InvalidArgument, "this request is only valid on an exec's attachment or stdin".into())
        }
    };
    let _ = conn.send(&reply).await;
}

fn err(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

fn file_error(path: &str, e: &std::io::Error) -> Response {
    let (kind, message) = crate::confined::io_error(path, e);
    err(kind, message)
}

async fn read_file(state: &Shared, conn: Conn, path: &str) {
    let opened = state.borrow().root.open_read(path);
    let (mut file, len) = match opened {
        Ok(x) => x,
        Err((kind, message)) => {
            let _ = conn.send(&err(kind, message)).await;
            return;
        }
    };
    let w = conn.writer();
    if w.send(&Response::FileData { len }).await.is_err() {
        return;
    }
    let mut left = len;
    let mut buf = vec![0u8; CHUNK];
    let end = loop {
        if left == 0 {
            break Response::Done;
        }
        let want = buf.len().min(left as usize);
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                let at = len - left;
                let what = format!("{path}: the file shrank from {len} to {at} bytes while it was read");
                break err(ErrorKind::Changed, format!("{what} (what followed byte {at} was not read)"));
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let (kind, message) = crate::confined::io_error(path, &e);
                break err(kind, format!("{message} (after {} of {len} bytes)", len - left));
            }
        };
        if w.send(&Response::FileChunk { len: n as u64 }).await.is_err() || w.send_raw(&buf[..n]).await.is_err() {
            return;
        }
        left -= n as u64;
    };
    let _ = w.send(&end).await;
}

async fn write_file(state: &Shared, conn: &mut Conn, path: &str, len: u64, mode: u32) -> Response {
    let opened = state.borrow().root.open_write(path, mode);
    let mut failure = None;
    let mut file = match opened {
        Ok(f) => Some(f),
        Err((kind, message)) => {
            failure = Some(err(kind, message));
            None
        }
    };
    // Always consume the announced bytes, so the reply is read in order even when the write failed. Runs of
    // zeros are skipped (a hole), so a sparse file stays sparse and costs the sandbox no disk for them.
    let received = conn
        .recv_raw(len, |chunk| {
            if let Some(f) = file.as_mut() {
                let written = if chunk.iter().all(|&b| b == 0) {
                    std::io::Seek::seek(f, std::io::SeekFrom::Current(chunk.len() as i64)).map(drop)
                } else {
                    f.write_all(chunk)
                };
                if let Err(e) = written {
                    failure.get_or_insert_with(|| file_error(path, &e));
                    file = None;
                }
            }
            Ok(())
        })
        .await;
    // The length covers a trailing hole.
    if let (Ok(()), Some(f)) = (&received, file.as_ref()) {
        if let Err(e) = f.set_len(len) {
            failure.get_or_insert_with(|| file_error(path, &e));
        }
    }
    match (received, failure) {
        (Err(e), _) => err(ErrorKind::Other, format!("{path}: upload ended early: {e}")),
        (Ok(()), Some(f)) => f,
        (Ok(()), None) => Response::Done,
    }
}
