//! The watchdog: ends the sandbox when its lifetime (and grace, and some slack) passed and the agent's normal
//! shutdown did not, because the event loop is stuck (a bug, a file operation that blocks for long). Whatever
//! the workload does, the lifetime holds. The normal shutdown ends the process long before; this only ever
//! fires on a wedged agent.
//!
//! A timer (`alarm`) whose SIGALRM handler acts, rather than a thread of its own (as before): the thread cost
//! every idle sandbox its 16 KiB kernel stack, its task, stack pages, a malloc arena and page tables. What a
//! thread could do and a handler cannot is act while the agent's one thread waits in the kernel
//! uninterruptibly: that wait would have held up the thread's exit all the same, and only its kill of the
//! workload came sooner.

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::OnceLock;
use std::time::Duration;

/// The end record the watchdog writes, rendered when it is armed: a signal handler must not allocate.
static END: OnceLock<Vec<u8>> = OnceLock::new();

/// Arms the watchdog to fire `deadline` from now and write `end` (a rendered end record) when it does.
pub(crate) fn arm(deadline: Duration, end: Vec<u8>) {
    let _ = END.set(end);
    let action = SigAction::new(SigHandler::Handler(fire), SaFlags::empty(), SigSet::all());
    // SAFETY: the handler makes only async-signal-safe calls and reads a value set before it is installed.
    if let Err(e) = unsafe { sigaction(Signal::SIGALRM, &action) } {
        crate::log!("no watchdog ({e}); the lifetime relies on the event loop alone");
        return;
    }
    let secs = deadline.as_secs().saturating_add(u64::from(deadline.subsec_nanos() > 0));
    nix::unistd::alarm::set(secs.clamp(1, u64::from(u32::MAX)) as u32);
}

extern "C" fn fire(_: libc::c_int) {
    const LINE: &[u8] = b"hangar-agent: the lifetime passed and the agent did not shut down: killing the sandbox\n";
    // SAFETY: write(2) and kill(2) are async-signal-safe; the buffer is static.
    unsafe {
        libc::write(2, LINE.as_ptr().cast(), LINE.len());
        libc::kill(-1, libc::SIGKILL);
    }
    if let Some(end) = END.get() {
        crate::server::write_end(end);
    }
    // SAFETY: _exit ends the process at once; nothing of ours needs unwinding or flushing.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    const CHILD: &str = "HANGAR_WATCHDOG_TEST_DIR";

    /// An agent whose event loop never comes back (a thread that only sleeps) is ended by the watchdog, which
    /// writes its end record. Run as the first process of a pid namespace of its own (the watchdog kills
    /// every process it can see), by re-running this test binary under `unshare`.
    #[test]
    fn a_stuck_agent_is_ended_by_its_watchdog_which_records_why() {
        if let Ok(dir) = std::env::var(CHILD) {
            let dir = std::fs::File::open(dir).unwrap();
            // SAFETY: dup2 onto the state directory's number, which nothing else in this process uses.
            assert_eq!(unsafe { libc::dup2(dir.as_raw_fd(), crate::state::STATE_DIR_FD) }, 5);
            super::arm(Duration::from_millis(300), b"{\"reason\":\"lifetime_exceeded\"}".to_vec());
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let dir = std::env::temp_dir().join(format!("hangar-watchdog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "watchdog::tests::a_stuck_agent_is_ended_by_its_watchdog_which_records_why"])
            .env(CHILD, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs the stuck agent in a pid namespace of its own");
        // Armed for 300 ms, which is one second in `alarm`'s whole seconds; a watchdog that never fires fails
        // here rather than hanging the suite.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the watchdog did not end the stuck agent within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        let record = std::fs::read_to_string(dir.join(hangar_agent_protocol::END_RECORD_FILE));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(status.success(), "{status:?}: {stderr}");
        assert!(stderr.contains("the lifetime passed and the agent did not shut down"), "{stderr}");
        assert_eq!(record.unwrap(), "{\"reason\":\"lifetime_exceeded\"}");
    }
}
