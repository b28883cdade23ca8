//! Cloning the sandbox's first process into fresh namespaces and exec'ing the init agent in it.

use crate::{Error, Result};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The file descriptors the agent starts with, and the only ones: they are placed at fixed numbers in the
/// child and every other descriptor of the caller is closed before the agent runs (a caller's open files must
/// never reach a sandbox). stdin `/dev/null`, stdout and stderr the agent's log, 3 the listening control
/// socket, 4 the status pipe (the agent writes one line, `ok` or an error, once its sandbox is built), 5 the
/// sandbox's host-side state directory (journals, how the sandbox ended), 6 the agent's configuration (read
/// from a descriptor so that no host path shows in the sandbox's `/proc/1/cmdline`).
pub struct AgentFds<'a> {
    /// The agent's log file (stdout and stderr).
    pub log: BorrowedFd<'a>,
    /// Listening unix socket the engine connects to.
    pub listener: BorrowedFd<'a>,
    /// Write end of the status pipe.
    pub status: BorrowedFd<'a>,
    /// The sandbox's state directory on the host.
    pub state_dir: BorrowedFd<'a>,
    /// The agent's configuration file, opened for reading.
    pub config: BorrowedFd<'a>,
}

/// The first descriptor number above those of [`AgentFds`].
const FIRST_UNUSED_FD: u32 = 7;

/// A freshly spawned agent.
#[derive(Debug)]
pub struct SpawnedAgent {
    /// The agent's pid in the caller's pid namespace.
    pub pid: Pid,
}

/// Namespaces a sandbox is born in. The cgroup namespace is entered by the agent itself once it has joined
/// its cgroups, so that the namespace's root is the sandbox's own cgroup.
const SANDBOX_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWNET);

/// Clones a process into new mount, pid, uts, ipc and net namespaces and execs `agent_bin` there with
/// `args` (`argv[0]` is `hangar-agent`, not the host path), as PID 1 of the new pid namespace, in a session
/// of its own (so a terminal's Ctrl-C never reaches it), holding exactly the descriptors of [`AgentFds`].
/// The child runs only async-signal-safe code (dup2, close_range, setsid, execve) between clone and exec:
/// all strings are prepared before the clone.
pub fn spawn_agent(agent_bin: &Path, args: &[&str], env: &[(&str, &str)], fds: AgentFds<'_>) -> Result<SpawnedAgent> {
    let bin = cstring(agent_bin.as_os_str().as_bytes(), "agent path")?;
    let mut argv = vec![cstring(b"hangar-agent", "agent name")?];
    for a in args {
        argv.push(cstring(a.as_bytes(), "agent argument")?);
    }
    let envp = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes(), "agent environment"))
        .collect::<Result<Vec<_>>>()?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::sys("open", "/dev/null", e))?;
    // Raise every source fd above the targets so that dup2 in the child can never clobber one with another.
    let high = |fd: BorrowedFd<'_>| -> Result<OwnedFd> {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(16))
            .map_err(|e| Error::sys("dup", "agent fd", e))
            .map(|raw| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
            })
    };
    let sources = [
        high(std::os::fd::AsFd::as_fd(&devnull))?,
        high(fds.log)?,
        high(fds.log)?,
        high(fds.listener)?,
        high(fds.status)?,
        high(fds.state_dir)?,
        high(fds.config)?,
    ];
    let plan: Vec<(RawFd, RawFd)> =
        sources.iter().enumerate().map(|(target, src)| (src.as_raw_fd(), target as RawFd)).collect();

    // execve's pointer arrays are built here too: allocating in the child of a multi-threaded process can
    // deadlock on a malloc lock held by another thread at the time of the clone.
    let argv_p: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_p: Vec<*const libc::c_char> =
        envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let mut stack = vec![0u8; 256 * 1024];
    let child = Box::new(|| -> isize {
        // Runs in the child: async-signal-safe calls only.
        for &(src, target) in &plan {
            // SAFETY: plain dup2 on descriptors that are open in this process.
            if unsafe { libc::dup2(src, target) } < 0 {
                return 126;
            }
        }
        // Everything else the caller had open (its own files, a server's sockets, our high copies) goes.
        if close_descriptors_from(FIRST_UNUSED_FD) < 0 {
            return 126;
        }
        // SAFETY: setsid has no memory-safety preconditions.
        unsafe { libc::setsid() };
        // SAFETY: the path and both arrays are NUL-terminated and outlive this call.
        unsafe { libc::execve(bin.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
        127
    });
    // SAFETY: the callback performs only async-signal-safe operations on memory prepared before the clone,
    // and the stack outlives the call (the child runs on its own copy of the address space).
    let pid = unsafe { nix::sched::clone(child, &mut stack, SANDBOX_NAMESPACES, Some(libc::SIGCHLD)) }
        .map_err(|e| Error::sys("clone sandbox namespaces", agent_bin.display(), e))?;
    Ok(SpawnedAgent { pid })
}

/// Closes every descriptor numbered `first` or above. Async-signal-safe (one system call), so it may run
/// between fork and exec. Returns the system call's result (negative on failure).
pub fn close_descriptors_from(first: u32) -> i32 {
    // SAFETY: close_range takes two numbers and flags and touches no memory.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) as i32 }
}

/// Marks every descriptor numbered `first` or above close-on-exec (the descriptors stay usable until the
/// exec). Async-signal-safe. Returns the system call's result (negative on failure).
pub fn cloexec_descriptors_from(first: u32) -> i32 {
    // SAFETY: close_range takes two numbers and flags and touches no memory.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) as i32 }
}

fn cstring(b: &[u8], what: &str) -> Result<CString> {
    CString::new(b).map_err(|_| Error::Unsupported(format!("{what} contains a NUL byte")))
}
