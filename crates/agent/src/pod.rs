//! Pod mode (`hangar-agent pod`): the agent as the first process of a Kubernetes Pod's sandbox container.
//!
//! There the kubelet built the sandbox from the user's image (namespaces, cgroup limits, the root filesystem,
//! the image's environment, working directory and user), so the agent builds nothing: it does what it does on
//! every backend (the main command, execs with their journals, files, the stop), reads its configuration from
//! the environment ([`PodConfig`]), keeps its state in a directory of the Pod's, and is reached over TCP inside
//! the Pod's network namespace: each TCP connection is one `hangar_agent_protocol::remote` stream (the
//! engine's port-forward through the API server) carrying many agent connections, after a token check.
//!
//! What Kubernetes keeps after the container is gone tells the rest: the container's standard output is a copy
//! of the sandbox's log (the main command's output, so `kubectl logs` shows what it does for any container),
//! and its termination message is how the sandbox ended (the end record, with the log's totals), or the
//! `StartReport` line of a main command that could not start. The agent's own log goes to `agent.log` in its
//! state directory.

use crate::server::{serve, Incoming, Started, TERMINATION_LOG};
use crate::state::{set_cloexec, STATE_DIR_FD};
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{remote, PodConfig, POD_CONFIG_ENV};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::sync::mpsc;

/// A client has this long to greet the agent before its connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the agent in its Pod until the sandbox ends.
pub(crate) fn main() -> Result<(), String> {
    // When the sandbox ends the agent signals every process it can see: only its own pid namespace may be
    // that (never a host's).
    if std::process::id() != 1 {
        return Err("pod mode runs only as the first process of a pid namespace of its own (a container)".into());
    }
    let raw = std::env::var(POD_CONFIG_ENV).map_err(|e| format!("{POD_CONFIG_ENV}: {e}"))?;
    let cfg: PodConfig = serde_json::from_str(&raw).map_err(|e| format!("{POD_CONFIG_ENV}: {e}"))?;
    // SAFETY: nothing else runs yet: this process has one thread.
    unsafe { std::env::remove_var(POD_CONFIG_ENV) };
    // The workload shares this pid namespace: not dumpable, the agent's memory, descriptors (the journals) and
    // root cannot be inspected or traced by any process without CAP_SYS_PTRACE, which a sandbox lacks.
    // SAFETY: PR_SET_DUMPABLE takes an integer and changes only this process's flag.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_DUMPABLE): {}", std::io::Error::last_os_error()));
    }
    let _ = TERMINATION_LOG.set(cfg.termination_log.clone());
    place_state_dir(&cfg.state_dir)?;
    // Standard error (the agent's log) to a file: the container log is the sandbox's.
    let log = cfg.state_dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    // SAFETY: dup2 onto standard error, which only the log macro writes to (whole lines).
    if unsafe { libc::dup2(log.as_raw_fd(), 2) } != 2 {
        return Err(format!("agent.log: {}", std::io::Error::last_os_error()));
    }
    drop(log);
    let mut workload = cfg.workload;
    // The container's environment (the image's, then the Pod's), then the workload's own.
    let mut env: Vec<(String, String)> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    for (k, v) in std::mem::take(&mut workload.env) {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    workload.env = env;
    if workload.workdir.is_empty() {
        workload.workdir = std::env::current_dir().map_or("/".into(), |d| d.to_string_lossy().into_owned());
    }
    // Listening before the main command starts: once the Pod runs, a connection that is refused means the
    // agent is gone, not early.
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
    listener.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
    let mut started = match Started::start(&workload, hangar_runtime::cgroups::CgroupDirs::open(&[], "")) {
        Ok(started) => started,
        Err(report) => {
            let _ = std::fs::write(&cfg.termination_log, report.line());
            return Err(report.line());
        }
    };
    started.main_copy = std::io::stdout().as_fd().try_clone_to_owned().ok();
    crate::log!("pod agent listening on {}", cfg.listen);
    crate::server::on_event_loop(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_streams(listener, cfg.token_digest, tx));
        serve(workload, started, Incoming::Remote(rx)).await
    })
}

/// Opens (making it if needed) the state directory and places it where every journal operation finds it.
fn place_state_dir(path: &std::path::Path) -> Result<(), String> {
    use nix::fcntl::{open, OFlag};
    std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
    let dir = open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    if dir.as_raw_fd() != STATE_DIR_FD {
        // SAFETY: dup2 onto a number nothing of ours uses yet (the process has just started); the new
        // descriptor is owned by the OwnedFd made from it, which is leaked below to stay open for good.
        let placed = unsafe { libc::dup2(dir.as_raw_fd(), STATE_DIR_FD) };
        if placed != STATE_DIR_FD {
            return Err(format!("place {}: {}", path.display(), std::io::Error::last_os_error()));
        }
        // SAFETY: dup2 just made this descriptor for us alone.
        let placed = unsafe { OwnedFd::from_raw_fd(placed) };
        set_cloexec(&placed);
        std::mem::forget(placed);
    } else {
        std::mem::forget(dir);
    }
    Ok(())
}

/// Accepts TCP connections; each, once its client showed the sandbox's token, carries agent connections.
async fn accept_streams(listener: tokio::net::TcpListener, digest: String, conns: mpsc::Sender<Conn>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: not a reason to end the sandbox; try again shortly.
                crate::log!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (digest, conns) = (digest.clone(), conns.clone());
        tokio::spawn(async move {
            let mut accepted = match tokio::time::timeout(HANDSHAKE_TIMEOUT, remote::accept(stream, &digest)).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e)) => return crate::log!("a client was refused: {e}"),
                Err(_) => return crate::log!("a client sent no greeting within {HANDSHAKE_TIMEOUT:?}"),
            };
            while let Some(conn) = accepted.recv().await {
                if conns.send(conn).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `hangar-agent install DEST`: copies this binary to DEST (executable), as a Pod's init container does from
/// the agent's image into the volume the sandbox container starts the agent from.
pub(crate) fn install(dest: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = dest.with_extension("tmp");
    std::fs::copy("/proc/self/exe", &tmp).map_err(|e| format!("copy to {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::rename(&tmp, dest))
        .map_err(|e| format!("install {}: {e}", dest.display()))
}
