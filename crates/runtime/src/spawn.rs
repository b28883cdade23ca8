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
/// from a descriptor so that no host path shows in the sandbox's `/proc/1/cmdline`), and 7, when given, the
/// network namespace to join (see [`crate::net`]; without one the agent is cloned into an empty one).
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
    /// A prepared network namespace the agent joins first thing.
    pub netns: Option<BorrowedFd<'a>>,
}

/// The descriptor number of [`AgentFds::netns`] in the agent.
pub const NETNS_FD: i32 = 7;

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

/// Clones a process into new mount, pid, uts, ipc and (unless one is given) net namespaces and execs `agent_bin` there with
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
    let mut sources = vec![
        high(std::os::fd::AsFd::as_fd(&devnull))?,
        high(fds.log)?,
        high(fds.log)?,
        high(fds.listener)?,
        high(fds.status)?,
        high(fds.state_dir)?,
        high(fds.config)?,
    ];
    let mut namespaces = SANDBOX_NAMESPACES;
    if let Some(netns) = fds.netns {
        sources.push(high(netns)?);
        namespaces.remove(CloneFlags::CLONE_NEWNET);
    }
    let first_unused = sources.len() as u32;
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
        if close_descriptors_from(first_unused) < 0 {
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
    let pid = unsafe { nix::sched::clone(child, &mut stack, namespaces, Some(libc::SIGCHLD)) }
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

/// A process to start inside the sandbox, from its init agent: everything is prepared by the caller so that
/// the child runs only async-signal-safe code between fork and exec.
pub struct ProcessSpec<'a> {
    /// Program paths to try in order (the `PATH` candidates of `argv[0]`, or `argv[0]` itself when it holds a
    /// `/`), as `execvp` would.
    pub candidates: Vec<CString>,
    /// The argument vector.
    pub argv: Vec<CString>,
    /// The whole environment, `KEY=VALUE`.
    pub env: Vec<CString>,
    /// stdin, stdout, stderr.
    pub stdio: [BorrowedFd<'a>; 3],
    /// The working directory, already resolved inside the sandbox (`fchdir`, never a path looked up again).
    pub cwd: BorrowedFd<'a>,
    /// Join files of cgroups to write `0` to (`hangar_runtime::cgroups::ExecCgroup::join_fds`: joining those
    /// cgroups before anything runs, while the child has one thread).
    pub cgroup_joins: Vec<RawFd>,
    /// Run as this (uid, gid), with no supplementary groups.
    pub user: Option<(u32, u32)>,
    /// A session of its own with stdin (a terminal) as its controlling terminal; else a process group of its
    /// own.
    pub tty: bool,
}

/// The kernel's `struct sigaction` on x86-64 and aarch64 (what `rt_sigaction` takes; the C library's differs).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Whether signal `sig`'s disposition is not the default (caught or ignored). Async-signal-safe.
fn is_off_default(sig: i32) -> bool {
    let mut old = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    let size = std::mem::size_of::<u64>();
    // SAFETY: queries one signal's action into a local of the kernel's layout.
    let queried =
        unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<KernelSigaction>(), &mut old, size) };
    queried == 0 && old.handler != libc::SIG_DFL
}

/// [`ALTERED_SIGNALS`] before [`note_signal_dispositions`] ran (SIGKILL's bit, whose action never changes).
const NOT_NOTED: u64 = u64::MAX;
/// The signals this process has off their default disposition (bit `n - 1` for signal `n`), as noted.
static ALTERED_SIGNALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(NOT_NOTED);

/// Notes which signals this process has off their default disposition (caught or ignored), so that the
/// children of [`spawn_process`] reset just those instead of asking about all 64 (64 system calls in every
/// exec's path, ~45 µs here). Call once the process's signal handling is set up for good: a disposition it
/// changes afterwards would be left in its children until their exec (the kernel resets caught signals
/// there, not ignored ones), so a signal arriving between the child's unblocking and its exec could run
/// this process's handler in the child. Without a call, every child asks about every signal.
pub fn note_signal_dispositions() {
    let altered = (1..=64).filter(|&sig| is_off_default(sig)).fold(0u64, |set, sig| set | 1 << (sig - 1));
    ALTERED_SIGNALS.store(altered & !(1 << (libc::SIGKILL - 1)), std::sync::atomic::Ordering::Relaxed);
}

/// Descriptors are raised above this number before the child's sequence, so that its dup2 onto 0-2 never
/// clobbers one with another, and a report descriptor is the one left above 2 (close-on-exec).
const FLOOR: i32 = 64;

/// Where the child's sequence reports why it failed (`[step, errno]`) before it exits 127.
#[derive(Clone, Copy)]
enum Report<'a> {
    /// A close-on-exec descriptor above 2 (read with [`exec_report`]): the helper that is a process of its own.
    Pipe(RawFd),
    /// Memory the caller shares with the child (`CLONE_VM`) and reads once the child has executed or exited,
    /// which the caller of a `CLONE_VFORK` child waits for anyway (as `posix_spawn` does): no pipe to make,
    /// raise, close and read on every exec's path. Zero: executed.
    Memory(&'a std::sync::atomic::AtomicU64),
}

fn raise(fd: RawFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor that only we own.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FLOOR) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created above; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Everything the child's sequence touches, prepared before it runs: descriptors raised above [`FLOOR`] and
/// the NUL-terminated pointer arrays of `execve` (allocating after a fork of a multi-threaded process can
/// deadlock).
struct Prepared<'a> {
    spec: &'a ProcessSpec<'a>,
    stdio: [RawFd; 3],
    /// The raised copies among `stdio` (those of a descriptor numbered 0-2, which a dup2 onto 0-2 could
    /// clobber before its turn; the others are dup'd as they are).
    _raised: Vec<OwnedFd>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    candidates: Vec<*const libc::c_char>,
}

impl<'a> Prepared<'a> {
    fn new(spec: &'a ProcessSpec<'a>) -> std::io::Result<Self> {
        if spec.candidates.is_empty() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
        }
        let mut raised = Vec::new();
        let mut stdio = [0; 3];
        for (to, from) in stdio.iter_mut().zip(&spec.stdio) {
            *to = from.as_raw_fd();
            if *to <= 2 {
                let copy = raise(*to)?;
                *to = copy.as_raw_fd();
                raised.push(copy);
            }
        }
        let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
            v.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
        };
        let candidates = spec.candidates.iter().map(|c| c.as_ptr()).collect();
        Ok(Self { spec, stdio, _raised: raised, argv: ptrs(&spec.argv), envp: ptrs(&spec.env), candidates })
    }

    /// The recipe, in the process that becomes the command: stdio onto 0-2, cgroups joined, session or
    /// process group, working directory, user, default signals, every other descriptor closed, then `execve`
    /// of each candidate in turn. On failure it reports `[step, errno]` and exits 127.
    ///
    /// # Safety
    /// Only async-signal-safe calls on memory prepared before; a [`Report::Pipe`] must be close-on-exec and
    /// above 2.
    unsafe fn become_command(&self, report: Report<'_>) -> ! {
        let fail = |step: i32| -> ! {
            let e = *libc::__errno_location();
            match report {
                Report::Pipe(fd) => {
                    let msg = [step, e];
                    libc::write(fd, msg.as_ptr().cast(), 8);
                }
                Report::Memory(m) => {
                    m.store((step as u64) << 32 | e as u32 as u64, std::sync::atomic::Ordering::Release)
                }
            }
            libc::_exit(127)
        };
        for (target, &src) in self.stdio.iter().enumerate() {
            if libc::dup2(src, target as i32) < 0 {
                fail(1);
            }
        }
        for &fd in &self.spec.cgroup_joins {
            if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                fail(2);
            }
        }
        if self.spec.tty {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                fail(3);
            }
        } else if libc::setpgid(0, 0) < 0 {
            fail(3);
        }
        if libc::fchdir(self.spec.cwd.as_raw_fd()) < 0 {
            fail(4);
        }
        if let Some((uid, gid)) = self.spec.user {
            // The system calls themselves: the C library's wrappers would change the ids of every thread of
            // the process they think they are in, which for a child sharing the caller's memory is the caller.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setgid, gid) < 0
                || libc::syscall(libc::SYS_setuid, uid) < 0
            {
                fail(5);
            }
        }
        // A command starts with every signal's default action (the agent ignores SIGPIPE, and its handlers
        // must never run here), then unblocked (the caller blocked them all around the clone): the signals
        // the caller noted as off their default (see `note_signal_dispositions`), else each one that is.
        // (The system call, not the C library's `sigaction`, which refuses the two signals it uses itself, 32
        // and 33: an engine started with those ignored would pass that on to every command.)
        let dfl = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
        let size = std::mem::size_of::<u64>();
        let noted = ALTERED_SIGNALS.load(std::sync::atomic::Ordering::Relaxed);
        for sig in 1..=64 {
            let off_default = match noted {
                NOT_NOTED => is_off_default(sig),
                set => set & (1 << (sig - 1)) != 0,
            };
            if off_default {
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), size);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Only stdio and a report descriptor (close-on-exec) survive.
        let closed = match report {
            Report::Pipe(fd) => close_range_raw(3, fd as u32 - 1) >= 0 && close_range_raw(fd as u32 + 1, u32::MAX) >= 0,
            Report::Memory(_) => close_range_raw(3, u32::MAX) >= 0,
        };
        if !closed {
            fail(6);
        }
        // execvp's rule: ENOENT/ENOTDIR move on to the next candidate; EACCES is remembered. Unlike execvp, a
        // file the kernel cannot execute (ENOEXEC) is an error, never handed to /bin/sh.
        let mut errno = libc::ENOENT;
        for &path in &self.candidates {
            libc::execve(path, self.argv.as_ptr(), self.envp.as_ptr());
            let e = *libc::__errno_location();
            if e == libc::EACCES {
                errno = e;
            } else if e != libc::ENOENT && e != libc::ENOTDIR {
                errno = e;
                break;
            }
        }
        *libc::__errno_location() = errno;
        fail(7)
    }
}

/// Starts `spec` as a new process. The child keeps exactly its three stdio descriptors: everything else the
/// caller holds (host directories, journals, sockets) is closed before the exec, so no path the program is given
/// can reach them. Returns the child's pid, or why it could not be executed (the errno of the last candidate
/// that mattered, as `execvp` reports it).
///
/// The child shares the caller's memory until its exec (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does): no
/// copy of the caller's page tables, and no copy-on-write faults in the caller afterwards, which a `fork` of
/// the agent cost every exec (~0.1 ms here). The caller's thread waits meanwhile, as it would for the report
/// anyway; its signals are blocked until the child has reset them (see `become_command`).
pub fn spawn_process(spec: &ProcessSpec<'_>) -> std::io::Result<i32> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let prepared = Prepared::new(spec)?;
    let failure = std::sync::atomic::AtomicU64::new(0);
    let report = Report::Memory(&failure);
    let mut stack = vec![0u8; 64 * 1024];
    let mut blocked = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut blocked))?;
    // SAFETY: the child runs only `become_command` (async-signal-safe calls on memory prepared before, which
    // the caller keeps alive and leaves alone: it is suspended until the child execs or exits), on its own
    // stack, with every signal blocked until it has reset their handlers.
    let cloned = unsafe {
        nix::sched::clone(
            Box::new(|| prepared.become_command(report)),
            &mut stack,
            nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    };
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&blocked), None)?;
    let child = cloned.map_err(std::io::Error::from)?;
    drop(prepared);
    // The child has executed or exited by now (CLONE_VFORK): what it reported is in `failure`.
    match failure.load(std::sync::atomic::Ordering::Acquire) {
        0 => {
            // The child was executed, but the kernel is still loading the program and its interpreter, on this
            // CPU more often than not (the child starts where its parent ran): this thread, woken by the exec,
            // would otherwise go on with the caller's work first (exec round trip 10-25 µs shorter, in A/B
            // rounds against the same agent without this).
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
            Ok(child.as_raw())
        }
        // The child failed and exits 127; the caller's reaper collects it.
        report => Err(std::io::Error::from_raw_os_error(report as u32 as i32)),
    }
}

/// Becomes `spec` in this process (a helper that exists to be the command): the same recipe as
/// [`spawn_process`]'s child, reporting a failure on `report` (read it with [`exec_report`]) and exiting 127.
pub fn exec_process(spec: &ProcessSpec<'_>, report: BorrowedFd<'_>) -> ! {
    let raised = raise(report.as_raw_fd());
    let prepared = raised
        .as_ref()
        .map_err(|e| e.raw_os_error())
        .and_then(|r| Prepared::new(spec).map(|p| (p, r.as_raw_fd())).map_err(|e| e.raw_os_error()));
    match prepared {
        // SAFETY: single-threaded helper; the report descriptor is raised and close-on-exec.
        Ok((p, fd)) => unsafe { p.become_command(Report::Pipe(fd)) },
        Err(errno) => {
            let msg = [0, errno.unwrap_or(libc::EIO)];
            // SAFETY: writes 8 bytes from a local array to a descriptor the caller holds open.
            unsafe {
                libc::write(report.as_raw_fd(), msg.as_ptr().cast(), 8);
                libc::_exit(127)
            }
        }
    }
}

/// Reads what a command's start reported on `report` until it closes: `None` when the command was executed
/// (the report closed on exec without a word), else why it could not be.
pub fn exec_report(report: BorrowedFd<'_>) -> std::io::Result<Option<std::io::Error>> {
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        match nix::unistd::read(report, &mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match got {
        0 => None,
        8 => Some(std::io::Error::from_raw_os_error(i32::from_ne_bytes(msg[4..8].try_into().expect("4 bytes")))),
        _ => Some(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the start report was cut short")),
    })
}

fn close_range_raw(first: u32, last: u32) -> i32 {
    // SAFETY: close_range takes two numbers and flags and touches no memory.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) as i32 }
}
