//! A spare exec process, started ahead of time and already moved into a fresh exec cgroup.
//!
//! Moving a whole process into a cgroup v2 hierarchy waits for an RCU grace period when no migration is under
//! way (5–35 ms; back-to-back migrations are fast), unless the host set `favordynmods`; on v1 a process moves
//! itself cheaply (`tasks`, see `hangar_runtime::cgroups`), so agents there keep no spare unless told to. Paid
//! at exec time, that would make every isolated exec that much slower. So the agent keeps one spare (once its
//! sandbox ran an exec and execs pause): this binary re-executed (`/proc/self/exe`, which works
//! inside the sandbox) in helper mode, sitting in its exec cgroup, waiting on a socket for a command. An exec
//! hands it argv, environment, working directory, user and its stdio descriptors; the helper becomes the
//! command with `execve` (so the exec's pid is the helper's). Then the agent prepares the next spare off the
//! exec's path.
//!
//! The helper is a fresh image of the agent's binary that inherited none of the agent's host-side
//! descriptors, it is not dumpable until it becomes the command (so no sandbox process can trace it or open
//! its `/proc/PID/exe`, which is the host's agent binary), its working directory is a descriptor the agent
//! resolved inside the sandbox (`fchdir`, never a path looked up again), and it closes every descriptor but
//! the command's stdio on the way. The agent's binary needs the host's C library, which an image may lack:
//! where no helper can run (and for the main command), [`start_directly`] carries out the same order from a
//! fork of the agent that closes everything but stdio before its exec.

use hangar_agent_protocol::codec;
use hangar_runtime::cgroups::ExecCgroup;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The argument that puts the agent binary in helper mode.
pub const HELPER_ARG: &str = "--exec-helper";

/// What the helper becomes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Order {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<(u32, u32)>,
    /// Start a session with the terminal on stdin as its controlling terminal (else: a process group).
    pub tty: bool,
}

/// A waiting helper.
pub(crate) struct Spare {
    pub pid: i32,
    sock: UnixStream,
    pub cgroup: ExecCgroup,
}

/// What the helper is handed besides its order: the command's stdin, stdout, stderr and working directory.
pub(crate) struct Handover<'a> {
    pub stdio: [&'a OwnedFd; 3],
    pub cwd: &'a OwnedFd,
}

/// Starts a helper and has it join `cgroup` (the helper writes itself into it once it runs, so the agent's
/// command line, which names the sandbox, never shows on a process in the cgroup). Blocks for the cgroup
/// migration: call off the agent's thread.
pub(crate) fn prepare(cgroup: ExecCgroup) -> std::io::Result<Spare> {
    match prepare_helper(&cgroup) {
        Ok((pid, sock)) => Ok(Spare { pid, sock, cgroup }),
        Err(e) => {
            // The helper is gone (or never ran): its cgroup goes too.
            cgroup.remove(std::time::Duration::from_millis(500));
            Err(e)
        }
    }
}

fn prepare_helper(cgroup: &ExecCgroup) -> std::io::Result<(i32, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    let fds = cgroup.join_fds();
    // The helper inherits its cgroup's join descriptors under the same numbers (only its copies
    // lose close-on-exec: the flag belongs to each process's descriptor table) and is told which they are.
    let numbers: Vec<String> = fds.iter().map(|fd| fd.to_string()).collect();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args([HELPER_ARG, &numbers.join(",")])
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: fcntl is async-signal-safe; `fds` is moved into the closure and names descriptors we hold open.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Our copy of the helper's end must close, or a helper that dies would never be noticed.
    drop(cmd);
    let mut sock = ours;
    let mut ready = [0u8; 1];
    sock.read_exact(&mut ready)?;
    Ok((child.id() as i32, sock))
}

impl Spare {
    /// Hands the helper its command and stdio. `Ok(Ok(()))` once it has become the command; `Ok(Err(why))`
    /// when the command could not be executed (the helper then exits 127); `Err` when the helper is unusable.
    pub(crate) fn order(&mut self, order: &Order, with: Handover<'_>) -> std::io::Result<Result<(), std::io::Error>> {
        let frame = codec::encode(order)?;
        let raw: Vec<RawFd> = with.stdio.iter().chain([&with.cwd]).map(|f| f.as_raw_fd()).collect();
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(&frame)];
        let sent = nix::sys::socket::sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent < frame.len() {
            self.sock.write_all(&frame[sent..])?;
        }
        // The helper's end closes on a successful exec (close-on-exec); otherwise it reports why first.
        Ok(match hangar_runtime::exec_report(self.sock.as_fd())? {
            None => Ok(()),
            Some(why) => Err(why),
        })
    }
}

/// Carries out `order` from a fork of the agent (see `hangar_runtime::spawn_process`), joining `cgroup` on
/// the way: the path a spare saves, and the one that works in any image. Returns the command's pid.
pub(crate) fn start_directly(order: &Order, with: Handover<'_>, cgroup: Option<&ExecCgroup>) -> std::io::Result<i32> {
    let stdio = with.stdio.map(|f| f.as_fd());
    let cgroup_joins = cgroup.map(|cg| cg.join_fds()).unwrap_or_default();
    hangar_runtime::spawn_process(&process_spec(order, stdio, with.cwd.as_fd(), cgroup_joins)?)
}

/// The order as the runtime's process recipe (shared by both ways of starting a command).
fn process_spec<'a>(
    order: &Order,
    stdio: [BorrowedFd<'a>; 3],
    cwd: BorrowedFd<'a>,
    cgroup_joins: Vec<RawFd>,
) -> std::io::Result<hangar_runtime::ProcessSpec<'a>> {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput));
    let prog = order.argv.first().ok_or(std::io::ErrorKind::InvalidInput)?;
    let path = order.env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    // Like execvp: a name with a slash is a path; otherwise each PATH entry in turn (the kernel resolves
    // them in the child, which by then holds nothing but stdio).
    let candidates = if prog.contains('/') {
        vec![c(prog)?]
    } else {
        path.split(':')
            .map(|dir| if dir.is_empty() { c(prog) } else { c(&format!("{}/{prog}", dir.trim_end_matches('/'))) })
            .collect::<std::io::Result<_>>()?
    };
    Ok(hangar_runtime::ProcessSpec {
        candidates,
        argv: order.argv.iter().map(|a| c(a)).collect::<std::io::Result<_>>()?,
        env: order.env.iter().map(|(k, v)| c(&format!("{k}={v}"))).collect::<std::io::Result<_>>()?,
        stdio,
        cwd,
        cgroup_joins,
        user: order.user,
        tty: order.tty,
    })
}

/// `PATH` for a command whose environment sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Helper mode: wait for an order on stdin (a socket), become the command. Never returns.
pub fn helper() -> ! {
    // Until the exec, this process runs the host's agent binary: nobody in the sandbox may trace it or open
    // its /proc entries (execve of the command makes the command dumpable again, as usual).
    if nix::sys::prctl::set_dumpable(false).is_err() {
        std::process::exit(126);
    }
    // SAFETY: the agent gave us the socket as stdin; nothing else in this fresh process owns fd 0.
    let stdin = unsafe { OwnedFd::from_raw_fd(0) };
    // Keep the socket off fd 0 (the command's stdin goes there) and close it on exec.
    let sock = match nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that we now own.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(_) => std::process::exit(126),
    };
    drop(stdin);
    let mut sock = UnixStream::from(sock);
    // Join the exec cgroup (the slow part a spare exists for), then say so.
    let numbers = std::env::args().nth(2).unwrap_or_default();
    for fd in numbers.split(',').filter(|n| !n.is_empty()) {
        let Some(fd) = fd.parse::<RawFd>().ok().filter(|&fd| fd > 2) else { std::process::exit(126) };
        // SAFETY: the agent left these descriptors open for us (and named them); we own and close them here.
        let mut procs = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if procs.write_all(b"0").is_err() {
            std::process::exit(126);
        }
    }
    if sock.write_all(b"R").is_err() {
        std::process::exit(126);
    }
    let (order, fds) = match receive(&sock) {
        Ok(x) => x,
        Err(_) => std::process::exit(126),
    };
    let [stdin, stdout, stderr, cwd]: [OwnedFd; 4] = match fds.try_into() {
        Ok(f) => f,
        Err(_) => std::process::exit(126),
    };
    let stdio = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    match process_spec(&order, stdio, cwd.as_fd(), vec![]) {
        Ok(spec) => hangar_runtime::exec_process(&spec, sock.as_fd()),
        Err(_) => std::process::exit(126),
    }
}

fn receive(sock: &UnixStream) -> std::io::Result<(Order, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    let mut fds = Vec::new();
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf[got..])];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg = nix::sys::socket::recvmsg::<()>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in our table; we own them.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += msg.bytes;
        if let Some((order, _)) = codec::decode_prefix(&buf[..got])? {
            return Ok((order, fds));
        }
        if got == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}
