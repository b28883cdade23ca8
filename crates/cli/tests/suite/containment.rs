//! The escape suite: each test tries, as a workload or a tenant would, to reach something of the host (a
//! file, a descriptor, a device, the agent) and asserts that the host marker is neither read nor written and
//! that the refusal is clear. Run on both backends (through the server as well as embedded).

use crate::common::*;
use hangar::{Error, FileErrorKind, SandboxState};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A host file with unique content, under the state directory (next to the sandbox's own host-side files)
/// and one in /tmp; removed on drop.
struct HostMarker {
    paths: Vec<PathBuf>,
    content: String,
}

impl HostMarker {
    fn new(tag: &str) -> Self {
        let content = format!("host-secret-{tag}-{}", std::process::id());
        let paths = vec![
            state_dir().join(format!("marker-{tag}")),
            PathBuf::from(format!("/tmp/marker-{tag}-{}", std::process::id())),
        ];
        for p in &paths {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, &content).unwrap();
        }
        Self { paths, content }
    }

    /// The marker is still exactly as written and no file appeared next to it.
    fn assert_untouched(&self) {
        for p in &self.paths {
            assert_eq!(std::fs::read_to_string(p).unwrap(), self.content, "{} was written", p.display());
        }
        for name in ["pwned", "marker-pwned"] {
            for dir in [state_dir(), PathBuf::from("/tmp"), state_dir().join("sandboxes")] {
                assert!(!dir.join(name).exists(), "a sandbox wrote {}", dir.join(name).display());
            }
        }
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Paths that lead, through the agent's descriptors and /proc magic links, to the host's state directory
/// (where the marker is) or its root.
fn escape_paths(marker: &HostMarker) -> Vec<String> {
    let host_tmp_marker = marker.paths[1].display().to_string();
    let mut paths = vec![
        "/proc/self/cwd/../../../../..".to_string() + &host_tmp_marker,
        format!("/proc/self/root{host_tmp_marker}"),
        format!("/proc/1/root{host_tmp_marker}"),
        format!("/proc/1/cwd/../../../..{host_tmp_marker}"),
        format!("../../../../../../..{host_tmp_marker}"),
        "/tmp/link-to-agent-fd/../../marker-containment".to_string(),
        "/tmp/link-to-proc-root/tmp/x".to_string(),
    ];
    // Every descriptor number the agent could hold: the state dir, cgroup dirs, journals, sockets.
    for fd in 0..40 {
        paths.push(format!("/proc/self/fd/{fd}/../../marker-containment"));
        paths.push(format!("/proc/1/fd/{fd}/../../marker-containment"));
        paths.push(format!("/proc/thread-self/fd/{fd}/../marker-containment"));
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_operations_never_reach_host_files_through_descriptors_or_magic_links() {
    let marker = HostMarker::new("containment");
    let sb = sandbox().await;
    // Symlinks planted by the workload, pointing into the agent's descriptors and at /proc roots.
    sb.exec(["sh", "-c", "ln -s /proc/1/fd/5 /tmp/link-to-agent-fd; ln -s /proc/self/root /tmp/link-to-proc-root; ln -s /proc/self/fd/5/../../marker-containment /tmp/planted"])
        .check(true)
        .await
        .unwrap();
    let mut paths = escape_paths(&marker);
    paths.push("/tmp/planted".into());
    for path in &paths {
        match sb.read_file(path).await {
            Ok(data) => {
                assert!(!String::from_utf8_lossy(&data).contains(&marker.content), "{path} read the host marker");
                panic!("{path}: a read through a magic link succeeded ({} bytes)", data.len());
            }
            Err(Error::File { kind, message, .. }) => {
                assert!(
                    matches!(kind, FileErrorKind::NotAllowed | FileErrorKind::NotFound),
                    "{path}: {kind:?} {message}"
                );
                assert!(message.contains(path.as_str()), "the message names the path: {message}");
            }
            Err(e) => panic!("{path}: unexpected error {e}"),
        }
        match sb.write_file(&format!("{path}-pwned"), "pwned").await {
            Ok(()) => {}
            Err(Error::File { kind, .. }) => assert_ne!(kind, FileErrorKind::Other, "{path}: a clear kind"),
            Err(e) => panic!("{path}: unexpected error {e}"),
        }
        for w in [path.clone(), format!("{path}/../pwned")] {
            let _ = sb.write_file(&w, "pwned").await;
        }
    }
    marker.assert_untouched();
    // A typed, clear refusal for the classic one.
    match sb.read_file("/proc/self/fd/5/../../../../etc/shadow").await {
        Err(Error::File { kind: FileErrorKind::NotAllowed, message, .. }) => {
            assert!(message.contains("/proc/self/fd/5") && message.contains("only inside the sandbox"), "{message}")
        }
        other => panic!("expected NotAllowed, got {other:?}"),
    }
    // Symlinks that stay inside still work, as they should.
    sb.exec(["sh", "-c", "echo inside > /tmp/real; ln -s /tmp/real /tmp/ok"]).check(true).await.unwrap();
    assert_eq!(sb.read_file("/tmp/ok").await.unwrap(), b"inside\n");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_directories_never_resolve_outside_even_without_a_spare_helper() {
    let sb = sandbox().await;
    sb.exec(["sh", "-c", "ln -s /proc/1/fd/5 /tmp/fdlink; ln -s /proc/1/root /tmp/rootlink; mkdir -p /tmp/real"])
        .check(true)
        .await
        .unwrap();
    for round in ["with a spare", "without a spare"] {
        if round == "without a spare" {
            // A workload can kill the spare helper; execs then start from a helper made on the spot.
            sb.exec(["sh", "-c", "pkill -9 -f exec-helper; true"]).await.unwrap();
        }
        for cwd in ["/proc/self/fd/5", "/proc/1/cwd", "/tmp/fdlink", "/tmp/rootlink", "/proc/1/root/tmp"] {
            match sb.exec(["pwd"]).cwd(cwd).await {
                Err(Error::File { kind, message, .. }) => {
                    assert!(
                        matches!(kind, FileErrorKind::NotAllowed | FileErrorKind::NotFound),
                        "{round}: {cwd}: {kind:?}"
                    );
                    assert!(
                        message.contains("only inside the sandbox") || message.contains("does not exist"),
                        "{message}"
                    );
                }
                Ok(r) => panic!("{round}: exec in {cwd} ran in {:?}", r.stdout_text()),
                Err(e) => panic!("{round}: {cwd}: unexpected error {e}"),
            }
        }
        // (A spare is prepared once execs pause for a moment: back-to-back ones start directly.)
        if round == "with a spare" && spares_expected() {
            assert!(spare_helper_waits(agent_pid(sb.id())).await, "{round}: no spare helper waits");
        }
        let r = sb.exec(["pwd"]).cwd("/tmp/real").await.unwrap();
        assert_eq!(r.stdout_text(), "/tmp/real\n", "{round}");
        // The exec's only descriptors are its stdio (3 is ls's own directory).
        if round == "with a spare" && spares_expected() {
            assert!(spare_helper_waits(agent_pid(sb.id())).await, "{round}: no spare helper waits");
        }
        let fds = sb.exec(["ls", "/proc/self/fd"]).await.unwrap();
        assert_eq!(fds.stdout_text(), "0\n1\n2\n3\n", "{round}: inherited descriptors");
    }
    // A sandbox whose working directory is a magic link does not start.
    match builder().workdir("/proc/self/fd/5/../../../..").create().await {
        Err(Error::SandboxFailed { message }) => assert!(message.contains("/proc/self/fd/5"), "{message}"),
        other => panic!("expected SandboxFailed, got {other:?}"),
    }
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_in_a_sandbox_holds_a_host_descriptor() {
    let sb = builder().command("sh").args(["-c", "sleep 1000"]).create().await.unwrap();
    // Every descriptor of every sandbox process that can be inspected points at stdio, pipes, /dev/null or
    // the sandbox's own terminal; the agent and its helpers cannot be inspected at all.
    let script = r#"
for p in /proc/[0-9]*; do
  for f in $p/fd/*; do
    t=$(readlink $f 2>/dev/null) || continue
    case "$t" in /dev/null|pipe:*|socket:*|/dev/pts/*|/proc/*) ;; *) echo "$p $f -> $t";; esac
  done
done
readlink /proc/1/fd/5 && echo "the agent's descriptors are readable"
ls /proc/1/root/ >/dev/null 2>&1 && echo "the agent's root is readable"
true"#;
    let r = sb.exec(["sh", "-c", script]).await.unwrap();
    assert_eq!(r.stdout_text(), "", "host descriptors seen: {}", r.stdout_text());
    // Neither do the mount table nor the agent's command line name a host path.
    let mounts =
        sb.exec(["cat", "/proc/self/mountinfo", "/proc/1/mountinfo"]).await.unwrap().stdout_text().into_owned();
    let host = state_dir().display().to_string();
    assert!(mounts.contains("upperdir=sandboxes/"), "overlay options are relative: {mounts}");
    assert!(!mounts.contains(&host), "the mount table shows the host's state directory {host}: {mounts}");
    assert_eq!(
        sb.exec(["cat", "/proc/1/cmdline"]).await.unwrap().stdout,
        format!("hangar-agent\0{}\0", sb.id()).as_bytes()
    );
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_outside_the_allow_list_cannot_be_made_or_opened() {
    let sb = sandbox().await;
    let py = r#"
import os, stat, errno
out = []
for name, major, minor in [("kmsg", 1, 11), ("userfaultfd", 10, 126), ("kvm", 10, 232), ("mem", 1, 1), ("loop0", 7, 0)]:
    for d in ["/dev", "/tmp"]:
        try:
            os.mknod(f"{d}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            out.append(f"made {d}/{name}")
        except OSError as e:
            out.append(f"{name}:{errno.errorcode[e.errno]}")
print(" ".join(sorted(set(out))))
for dev in ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/full", "/dev/tty"]:
    try:
        os.close(os.open(dev, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY))
        print(dev, "ok")
    except OSError as e:
        print(dev, errno.errorcode[e.errno])
"#;
    let r = sb.exec(["python3", "-c", py]).await.unwrap();
    let out = r.stdout_text();
    assert!(!out.contains("made"), "device nodes were made: {out}");
    assert!(out.starts_with("kmsg:EPERM kvm:EPERM loop0:EPERM mem:EPERM userfaultfd:EPERM\n"), "{out}");
    for dev in ["/dev/null ok", "/dev/zero ok", "/dev/urandom ok", "/dev/full ok"] {
        assert!(out.contains(dev), "the allowed devices work: {out}");
    }
    // A device node that is there anyway (as an image layer could ship one) opens nothing: the root is
    // nodev and, on cgroup v1, the device cgroup denies it too.
    let upper = state_dir().join("sandboxes").join(sb.id()).join("disk/root");
    let node = upper.join("kmsg-node");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 11),
    )
    .unwrap();
    let r = sb
        .exec(["sh", "-c", "ls -l /kmsg-node && (echo hello > /kmsg-node && echo opened || echo refused)"])
        .await
        .unwrap();
    assert!(r.stdout_text().contains("refused") && !r.stdout_text().contains("opened"), "{r:?}");
    // Deleting a file of a lower layer (overlayfs makes a whiteout device) still works.
    let rm = sb.exec(["sh", "-c", "rm /usr/bin/env && test ! -e /usr/bin/env && echo gone"]).await.unwrap();
    assert_eq!(rm.stdout_text(), "gone\n", "{rm:?}");
    assert!(std::path::Path::new("/usr/bin/env").exists(), "the host's file is untouched");
    // AF_VSOCK is refused like in Docker's profile.
    let vsock = sb.exec(["python3", "-c", "import socket\ntry:\n socket.socket(40, socket.SOCK_STREAM); print('open')\nexcept OSError as e: print(e.errno)"]).await.unwrap();
    assert_eq!(vsock.stdout_text(), "1\n", "socket(AF_VSOCK) fails with EPERM");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setuid_file_made_inside_is_useless_to_host_users() {
    let sb = sandbox().await;
    sb.exec(["sh", "-c", "cp /usr/bin/python3 /tmp/suid-python && chmod 4755 /tmp/suid-python"])
        .check(true)
        .await
        .unwrap();
    let inside = sb.exec(["sh", "-c", "ls -l /tmp/suid-python | cut -c1-10"]).await.unwrap();
    assert_eq!(inside.stdout_text(), "-rwsr-xr-x\n", "the bit is set inside");
    let copy = state_dir().join("sandboxes").join(sb.id()).join("disk/root/tmp/suid-python");
    assert!(copy.exists(), "the copy is in the sandbox's upper directory on the host");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(state_dir()).unwrap().permissions().mode() & 0o777, 0o700, "state dir is 0700");
    // Host user `nobody` cannot reach it.
    let script = format!("import os; os.setgid(65534); os.setuid(65534); os.execv('{0}', ['{0}', '-c', 'import os; print(os.geteuid())'])", copy.display());
    let out = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(!out.status.success(), "nobody ran the setuid copy: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And inside, the setuid bit gives nothing (nosuid, no_new_privs).
    let user = sb
        .exec([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/tmp/suid-python",
            "-c",
            "import os; print(os.geteuid())",
        ])
        .await
        .unwrap();
    assert_eq!(user.stdout_text(), "65534\n", "euid stays the user's: {user:?}");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_sockets_and_devices_are_refused_at_once_and_the_lifetime_still_holds() {
    let sb = builder().max_lifetime(Duration::from_secs(4)).create().await.unwrap();
    sb.exec([
        "sh",
        "-c",
        "mkfifo /tmp/fifo && python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.bind('/tmp/sock')\"",
    ])
    .check(true)
    .await
    .unwrap();
    let t = Instant::now();
    for path in ["/tmp/fifo", "/tmp/sock", "/dev/zero", "/dev/urandom", "/dev/tty"] {
        match sb.read_file(path).await {
            Err(Error::File { kind: FileErrorKind::NotARegularFile, message, .. }) => {
                assert!(message.contains(path) && message.contains("not a regular file"), "{message}")
            }
            other => panic!("reading {path}: expected NotARegularFile, got {other:?}"),
        }
    }
    for path in ["/tmp/fifo", "/tmp/sock", "/dev/null"] {
        match sb.write_file(path, "data").await {
            Err(Error::File { kind: FileErrorKind::NotARegularFile, .. }) => {}
            other => panic!("writing {path}: expected NotARegularFile, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(2), "the refusals took {:?}", t.elapsed());
    // The agent is not blocked: execs run, and the lifetime ends the sandbox on time.
    assert_eq!(sb.exec(["echo", "free"]).await.unwrap().stdout, b"free\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = sb.info().await.unwrap();
        if info.state.is_final() {
            assert_eq!((info.state, info.end_reason.as_deref()), (SandboxState::Terminated, Some("lifetime_exceeded")));
            break;
        }
        assert!(Instant::now() < deadline, "the 4 s lifetime did not end the sandbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_memory_kill_hits_the_workload_never_the_agent() {
    // Memory that no process owns (tmpfs pages) fills the limit: the OOM killer can only choose among
    // processes, and the agent must not be one of its candidates.
    let sb = builder().memory_mb(32).create().await.unwrap();
    let r = sb.exec(["dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=60"]).await.unwrap();
    assert_eq!(r.returncode, -9, "dd is the victim: {r:?}");
    assert!(matches!(r.ending, hangar::Ending::OomKilled), "{:?}", r.ending);
    assert_eq!(sb.info().await.unwrap().state, SandboxState::Running, "the agent survived");
    assert_eq!(sb.exec(["echo", "alive"]).await.unwrap().stdout, b"alive\n");
    // The memory cgroups (v1's `memory` line, v2's one line): an exec's is its own, below the workload's; the
    // agent's is not below the workload's.
    let memory_cgroup = |text: &str| {
        let line = text.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")));
        let line = line.or_else(|| text.lines().find(|l| l.starts_with("0::"))).unwrap_or_else(|| panic!("{text}"));
        line.splitn(3, ':').nth(2).unwrap().to_string()
    };
    let agent = memory_cgroup(&sb.exec(["cat", "/proc/1/cgroup"]).await.unwrap().stdout_text());
    let exec = memory_cgroup(&sb.exec(["cat", "/proc/self/cgroup"]).await.unwrap().stdout_text());
    let workload = exec.rsplit_once('/').map(|(w, _)| format!("{w}/")).unwrap();
    assert!(workload.len() > 1, "an exec's memory cgroup is below the workload's: {exec}");
    assert!(!format!("{agent}/").starts_with(&workload), "the agent ({agent}) is outside the workload ({workload})");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_agent_is_still_ended_at_its_lifetime_from_the_host() {
    let sb = builder().max_lifetime(Duration::from_secs(3600)).create().await.unwrap();
    let agent = agent_pid(sb.id());
    // Frozen from the host (its event loop and its watchdog alike), and its lifetime long past.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let cfg = state_dir().join("sandboxes").join(sb.id()).join("agent.json");
    let status = std::process::Command::new("touch").args(["-d", "2 hours ago"]).arg(&cfg).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = sb.info().await.unwrap();
        if info.state.is_final() {
            break info;
        }
        assert!(Instant::now() < deadline, "the engine did not end a sandbox past its lifetime: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((info.state, info.end_reason.as_deref()), (SandboxState::Terminated, Some("lifetime_exceeded")));
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_that_overflows_is_refused_not_wrapped() {
    // 2^44 MiB is 2^64 bytes: it must not wrap to a tiny (or zero) limit.
    for mib in [1u64 << 44, u64::MAX, 2 << 20] {
        match builder().memory_mb(mib).create().await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("exceeds the 1 TiB maximum"), "{m}"),
            other => panic!("memory_mb({mib}): expected InvalidArgument, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_back_and_forth_during_copies_never_leads_outside() {
    let marker = HostMarker::new("swap");
    let sb = sandbox().await;
    // The workload swaps /tmp/x between a regular file and a link into the agent's state directory (and a
    // racing rename of a directory on the way), as fast as it can, while files are read and written.
    let swapper = "mkdir -p /tmp/d; echo inside > /tmp/d/f; while true; do \
        ln -sfn /proc/1/fd/5/../marker-swap /tmp/x.l; mv -T /tmp/x.l /tmp/x; \
        echo inside > /tmp/x.f; mv -T /tmp/x.f /tmp/x; \
        mv -T /tmp/d /tmp/d2 2>/dev/null; ln -sfn /proc/self/root /tmp/d 2>/dev/null; rm -f /tmp/d; mv -T /tmp/d2 /tmp/d 2>/dev/null; done";
    let racing = sb.exec(["sh", "-c", swapper]).id("swapper").start().await.unwrap();
    let (mut inside, mut refused) = (0, 0);
    for i in 0..300 {
        let path = if i % 2 == 0 { "/tmp/x" } else { "/tmp/d/f" };
        match sb.read_file(path).await {
            Ok(data) => {
                assert!(!String::from_utf8_lossy(&data).contains(&marker.content), "{path}: read the host marker");
                inside += 1;
            }
            Err(Error::File { .. }) => refused += 1,
            Err(e) => panic!("{path}: unexpected {e}"),
        }
        let _ = sb.write_file(path, "pwned").await;
    }
    marker.assert_untouched();
    assert!(inside > 0 && refused > 0, "the race was run both ways: {inside} read inside, {refused} refused");
    sb.signal_exec("swapper", 9).await.unwrap();
    drop(racing);
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_cannot_be_lifted_through_the_agents_cgroup_descriptors() {
    let sb = builder().memory_mb(64).create().await.unwrap();
    // The workload's limit: v1's in the sandbox's memory cgroup, v2's in its `workload` child.
    let limit_file = PathBuf::from("/sys/fs/cgroup/memory/hangar").join(sb.id()).join("memory.limit_in_bytes");
    let unified = PathBuf::from("/sys/fs/cgroup/hangar").join(sb.id()).join("workload/memory.max");
    let read_limit = || std::fs::read_to_string(&limit_file).or_else(|_| std::fs::read_to_string(&unified)).unwrap();
    let before = read_limit();
    for fd in 0..40 {
        for name in [
            "memory.limit_in_bytes",
            "memory.max",
            "workload/memory.limit_in_bytes",
            "workload/memory.max",
            "cgroup.procs",
        ] {
            let path = format!("/proc/self/fd/{fd}/{name}");
            if let Ok(()) = sb.write_file(&path, "-1").await {
                // Wherever that landed, it was inside the sandbox.
                assert!(!path.contains("/proc/self/fd/"), "{path} was written");
            }
        }
    }
    assert_eq!(read_limit(), before, "the workload's memory limit changed");
    let hog = sb.exec(["python3", "-c", "a = bytearray(256 << 20); print('survived')"]).await.unwrap();
    assert_eq!(hog.returncode, -9, "the 64 MiB limit still holds: {hog:?}");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_budget_is_refused_where_the_engine_has_none() {
    match builder().disk_mb(100).create().await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("disk_bytes") && m.contains("HANGAR_DISK_BUDGET"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_information_in_proc_and_sys_is_masked_and_its_tunables_are_read_only() {
    let sb = sandbox().await;
    let sh = |script: &str| sb.exec(["sh", "-c", script]);
    // Masked directories are empty, and nothing can be made in them (not even by root).
    let r = sh("ls -A /proc/acpi /sys/firmware | grep -v : | grep -c . ; touch /proc/acpi/x || mkdir /sys/firmware/y || echo refused")
        .await
        .unwrap();
    assert_eq!(r.stdout_text(), "0\nrefused\n", "{r:?}");
    // Masked files read as nothing.
    let r = sh("cat /proc/kcore /proc/timer_list /proc/keys | wc -c").await.unwrap();
    assert_eq!(r.stdout_text().trim(), "0", "{r:?}");
    // Kernel tunables cannot be written.
    let r = sh("echo 1 > /proc/sys/vm/drop_caches && echo written || echo refused").await.unwrap();
    assert_eq!(r.stdout_text(), "refused\n", "{r:?}");
    // /dev holds devices and links, and /dev/shm is a sticky directory every user can write to.
    let r =
        sh("stat -c %a /dev/shm; echo x > /dev/shm/f && cat /dev/shm/f; ls -A /dev | grep -c '^\\.'").await.unwrap();
    assert_eq!(r.stdout_text(), "1777\nx\n0\n", "{r:?}");
    sb.stop().await.unwrap();
}
