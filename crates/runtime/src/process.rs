//! Watching processes the engine does not necessarily own: liveness that survives pid reuse, and pidfds.

use crate::{Error, Result};
use std::os::fd::{FromRawFd, OwnedFd};

/// The kernel's start time (clock ticks since boot) of `pid`, and whether it is still running (not a
/// zombie); `None` when no such process exists. Pair a pid with its start time to survive pid reuse.
pub fn process_start(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let running = !matches!(fields.first(), Some(&"Z") | Some(&"X"));
    // Field 22 of stat is the start time; `rest` begins at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, running))
}

/// Every process below `pid` in the process tree (children, their children, ...), as `/proc` shows them now.
/// A process that was orphaned (re-parented to PID 1) is no longer anyone's descendant: this finds a tree
/// where no cgroup holds it, as far as the tree still hangs together.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Field 4 (the parent) follows the state, after the command name's last ')'.
        let ppid = stat.rfind(')').and_then(|i| stat[i + 2..].split(' ').nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether the process `pid` that started at `start` is still running.
pub fn process_alive(pid: i32, start: u64) -> bool {
    matches!(process_start(pid), Some((s, true)) if s == start)
}

/// A pidfd for `pid`: becomes readable when the process exits.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::sys("pidfd_open", pid, nix::Error::last()));
    }
    // SAFETY: the kernel just returned this descriptor to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits (asynchronously, on the current tokio runtime) until `pid` exits, then reaps it if it is our
/// child. Returns at once if the process cannot be watched (it is already gone).
pub async fn wait_exit(pid: i32) {
    let Ok(fd) = pidfd_open(pid) else { return };
    pidfd_exited(fd).await;
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// Waits (asynchronously, on the current tokio runtime) until the process of pidfd `fd` has exited.
pub async fn pidfd_exited(fd: OwnedFd) {
    // SAFETY: `fd` is a valid pidfd owned by the AsyncFd for as long as it is registered.
    if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        let _ = afd.readable().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_is_alive_and_start_time_is_stable() {
        let me = std::process::id() as i32;
        let (start, running) = super::process_start(me).expect("own stat");
        assert!(running);
        assert!(super::process_alive(me, start));
        assert!(!super::process_alive(me, start + 1));
        assert!(super::process_start(i32::MAX).is_none());
    }

    #[test]
    fn descendants_are_found_through_the_tree() {
        // sh → sleep (a grandchild of this test through sh).
        let mut sh = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let pid = sh.id() as i32;
        let mut below = vec![];
        for _ in 0..200 {
            below = super::descendants(pid);
            if !below.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let cmdline = |p: i32| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
        assert!(below.iter().any(|&p| cmdline(p).starts_with("sleep\x0030")), "{below:?}");
        let me = super::descendants(std::process::id() as i32);
        assert!(me.contains(&pid) && below.iter().all(|p| me.contains(p)), "{me:?}");
        let _ = sh.kill();
        for p in below {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = sh.wait();
    }
}
