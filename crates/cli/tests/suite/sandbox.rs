//! Sandbox lifecycle, files and isolation against real sandboxes.

use crate::common::*;
use hangar::{Error, FileErrorKind, SandboxState};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_delete_leave_nothing_behind() {
    let sb = sandbox().await;
    let id = sb.id().to_string();
    assert!(!leftovers(&id).is_empty(), "a running sandbox has a cgroup and a directory");
    sb.exec(["sh", "-c", "sleep 1000 & echo started"]).await.unwrap();
    let t = Instant::now();
    let info = sb.stop().await.unwrap();
    // `sleep` dies on SIGTERM, so stopping must not wait out the 10 s grace.
    assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
    assert_eq!(info.state, SandboxState::Terminated);
    assert_eq!(info.end_reason.as_deref(), Some("stopped"));
    assert_eq!(leftovers(&id), Vec::<String>::new());
    sb.clone().delete().await.unwrap();
    assert!(client().list().await.unwrap().iter().all(|i| i.id != id), "deleted sandboxes are not listed");
    assert!(matches!(sb.info().await, Err(Error::NotFound { .. })));
}

/// A sandbox's overlays are `volatile`, so its teardown never runs `syncfs` on the host filesystem (which
/// waits for every other tenant's dirty data): the sandbox's own mount table says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlays_are_volatile_so_teardown_never_flushes_the_host() {
    let sb = sandbox().await;
    let r = sb.exec(["cat", "/proc/self/mountinfo"]).check(true).await.unwrap();
    sb.stop().await.unwrap();
    let text = r.stdout_text();
    let overlays: Vec<&str> = text.lines().filter(|l| l.contains(" - overlay ")).collect();
    assert!(overlays.iter().any(|l| l.split(' ').nth(4) == Some("/")), "the root is an overlay: {text}");
    for l in &overlays {
        // Newer kernels show the option as `fsync=volatile`.
        let volatile = |o: &str| o == "volatile" || o == "fsync=volatile";
        assert!(l.split(' ').next_back().is_some_and(|opts| opts.split(',').any(volatile)), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_main_command_that_ignores_sigterm_is_killed_after_the_grace() {
    let script = "import signal,time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen('/tmp/ready', 'w').close()\ntime.sleep(1000)";
    let sb = builder().command("python3").args(["-c", script]).create().await.unwrap();
    while sb.read_file("/tmp/ready").await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    let info = sb.stop_with_grace(Duration::from_millis(700)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(600), "the grace was not honoured: {:?}", t.elapsed());
    assert_eq!(info.state, SandboxState::Terminated);
    assert_eq!(info.exit_signal, Some(9));
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_command_exit_completes_or_fails_the_sandbox_and_lifetime_terminates_it() {
    let ok = builder().command("sh").args(["-c", "exit 0"]).create().await.unwrap();
    let bad = builder().command("sh").args(["-c", "sleep 0.1; exit 3"]).create().await.unwrap();
    let short = builder().max_lifetime(Duration::from_millis(500)).create().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // (However long the backend takes to notice: a kubelet, about a second more.)
    let deadline = Instant::now() + Duration::from_secs(10);
    for sb in [&ok, &bad, &short] {
        while !sb.info().await.unwrap().state.is_final() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ok = ok.info().await.unwrap();
    assert_eq!((ok.state, ok.exit_code), (SandboxState::Completed, Some(0)));
    let bad_info = bad.info().await.unwrap();
    assert_eq!((bad_info.state, bad_info.exit_code), (SandboxState::Failed, Some(3)));
    let short_info = short.info().await.unwrap();
    assert_eq!(short_info.state, SandboxState::Terminated);
    assert_eq!(short_info.end_reason.as_deref(), Some("lifetime_exceeded"));
    assert!(matches!(bad.exec(["true"]).await, Err(Error::NotRunning { .. })));
    for id in [&ok.id, &bad_info.id, &short_info.id] {
        assert_eq!(leftovers(id), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_use_stops_the_sandbox_on_error_and_on_panic() {
    let mut seen = None;
    let r: hangar::Result<()> = builder()
        .run(async |sb| {
            seen = Some(sb.id().to_string());
            sb.exec(["sh", "-c", "exit 2"]).check(true).await.map(|_| ())
        })
        .await;
    assert!(matches!(r, Err(Error::ExecutionFailed { .. })));
    let id = seen.unwrap();
    assert!(hangar::Sandbox::from_id_with(&client(), &id).await.unwrap().info().await.unwrap().state.is_final());
    assert_eq!(leftovers(&id), Vec::<String>::new());

    let (tx, rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        builder()
            .run(async |sb| -> hangar::Result<()> {
                tx.send(sb.id().to_string()).unwrap();
                panic!("user code panicked");
            })
            .await
    });
    assert!(task.await.unwrap_err().is_panic(), "the panic is resumed after the stop");
    let id = rx.recv().unwrap();
    assert!(hangar::Sandbox::from_id_with(&client(), &id).await.unwrap().info().await.unwrap().state.is_final());
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_never_reach_the_host() {
    let sb = sandbox().await;
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    sb.write_file("/work/deep/dir/blob.bin", &data).await.unwrap();
    assert!(sb.read_file("/work/deep/dir/blob.bin").await.unwrap() == data);
    sb.write_file("rel.txt", "relative").await.unwrap();
    assert_eq!(sb.exec(["cat", "/rel.txt"]).await.unwrap().stdout, b"relative", "relative paths start at the workdir");

    let canary = format!("hangar-canary-{}", std::process::id());
    // Writing through `..` and through symlinks pointing at host paths lands inside the sandbox.
    sb.write_file(&format!("../../../../../tmp/{canary}"), "x").await.unwrap();
    assert!(!std::path::Path::new("/tmp").join(&canary).exists(), "a write escaped to the host's /tmp");
    sb.exec(["ln", "-s", &format!("/root/{canary}"), "/tmp/wlink"]).check(true).await.unwrap();
    sb.write_file("/tmp/wlink", "y").await.unwrap();
    assert!(!std::path::Path::new("/root").join(&canary).exists(), "a write through a symlink reached the host");
    // The host's /etc/shadow is not in the sandbox at all, whichever way it is named. (An image may have one of
    // its own, as python:3.11 on the Kubernetes backend does: then that one is read, never the host's.)
    sb.exec(["ln", "-s", "/etc/shadow", "/tmp/shadow"]).check(true).await.unwrap();
    let own = sb.exec(["test", "-e", "/etc/shadow"]).await.unwrap().returncode == 0;
    let host_shadow = std::fs::read("/etc/shadow").unwrap();
    // (Through a /proc magic link the read is refused outright.)
    for (path, want) in [
        ("/etc/shadow", FileErrorKind::NotFound),
        ("/tmp/shadow", FileErrorKind::NotFound),
        ("../../etc/shadow", FileErrorKind::NotFound),
        ("/proc/1/root/etc/shadow", FileErrorKind::NotAllowed),
    ] {
        match sb.read_file(path).await {
            Err(Error::File { kind, path: p, message }) => {
                assert_eq!(kind, want, "{path}: {message}");
                assert_eq!(p, path);
                assert!(message.contains(path), "the message names the path: {message}");
            }
            Ok(data) if own && want == FileErrorKind::NotFound => assert!(data != host_shadow, "{path} is the host's"),
            other => panic!("reading {path} should fail, got {other:?}"),
        }
    }
    match sb.read_file("/tmp").await {
        Err(Error::File { kind: FileErrorKind::IsADirectory, .. }) => {}
        other => panic!("expected IsADirectory, got {other:?}"),
    }
    sb.stop().await.unwrap();
    assert!(matches!(sb.read_file("/rel.txt").await, Err(Error::NotRunning { .. })));
}

/// A file cut short while it is read fails the read as `FileErrorKind::Changed`, saying how far it got — not as
/// a sandbox that went away — and the sandbox goes on. (The reader holds the read at its first bytes through a
/// small pipe while the file is cut.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_cut_short_while_it_is_read_fails_as_changed() {
    use tokio::io::AsyncReadExt;
    let sb = sandbox().await;
    sb.exec(["sh", "-c", "yes 0123456789abcde | head -c 67108864 > /tmp/big"]).check(true).await.unwrap();
    let (mut sink, mut out) = tokio::io::duplex(64 << 10);
    let reader = {
        let sb = sb.clone();
        tokio::spawn(async move { sb.read_file_to("/tmp/big", &mut sink).await })
    };
    let mut got = vec![0u8; 4096];
    out.read_exact(&mut got).await.unwrap();
    sb.exec(["truncate", "-s", "4096", "/tmp/big"]).check(true).await.unwrap();
    out.read_to_end(&mut got).await.unwrap();
    match reader.await.unwrap() {
        Err(Error::File { kind: FileErrorKind::Changed, path, message }) => {
            assert_eq!(path, "/tmp/big");
            assert!(message.contains("shrank from 67108864 to "), "{message}");
        }
        other => panic!("expected a Changed file error, got {other:?} after {} bytes", got.len()),
    }
    assert!(got.len() < 64 << 20, "the read was cut short: {} bytes", got.len());
    // Every byte given is the file's (nothing made up to reach the announced length).
    let pattern = "0123456789abcde\n".repeat(got.len() / 16 + 1);
    assert!(got == pattern.as_bytes()[..got.len()], "the {} bytes given are the file's", got.len());
    assert_eq!(sb.read_file("/tmp/big").await.unwrap().len(), 4096, "a new read reads what the file holds now");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_is_isolated_from_the_host() {
    let sb = sandbox().await;
    let run = |cmd: &'static str| {
        let sb = sb.clone();
        async move { sb.exec(["sh", "-c", cmd]).await.unwrap() }
    };
    // Own pid namespace: PID 1 is the agent, and only the sandbox's few processes are visible.
    let pids = run("ls -d /proc/[0-9]* | wc -l").await;
    assert!(pids.stdout_text().trim().parse::<u32>().unwrap() < 10, "sees host processes: {}", pids.stdout_text());
    assert_eq!(run("cat /proc/1/comm").await.stdout_text(), "hangar-agent\n");
    // Own hostname, loopback-only network.
    assert_eq!(run("hostname").await.stdout_text().trim(), sb.id());
    let ifaces = run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(ifaces.stdout_text(), "lo\n");
    // No routes at all: nothing can leave the sandbox (checked without sending anything anywhere).
    assert_eq!(run("tail -n +2 /proc/net/route | wc -l").await.stdout_text().trim(), "0");
    let lo = sb.exec(["python3", "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); c=socket.create_connection(s.getsockname()); print('lo ok')"]).await.unwrap();
    assert_eq!(lo.stdout_text(), "lo ok\n");
    // Host secrets are not there; writes stay in the sandbox's copy-on-write layer.
    assert_ne!(run("ls /root/.ssh /home/*/.ssh /etc/shadow 2>&1").await.returncode, 0);
    let marker = format!("/usr/bin/hangar-marker-{}", std::process::id());
    let w = sb.exec(["sh", "-c", &format!("echo x > {marker} && cat {marker}")]).await.unwrap();
    assert_eq!(w.stdout_text(), "x\n", "the sandbox's /usr is writable copy-on-write");
    assert!(!std::path::Path::new(&marker).exists(), "a write to /usr reached the host");
    assert_eq!(run("ls /usr/local | wc -l").await.stdout_text().trim(), "0", "the host's /usr/local is hidden");
    // Privileged operations are refused.
    assert_ne!(run("mount -t tmpfs none /mnt").await.returncode, 0);
    let unshare =
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); print(libc.unshare(0x20000), ctypes.get_errno())";
    let seccomp = sb.exec(["python3", "-c", unshare]).await.unwrap();
    assert_eq!(seccomp.stdout_text(), "-1 1\n", "unshare(CLONE_NEWNS) fails with EPERM");
    let caps = run("grep CapEff /proc/self/status").await;
    assert_eq!(
        caps.stdout_text().trim(),
        "CapEff:\t00000000a00425fb",
        "only the default capability set (Docker's, less MKNOD)"
    );
    assert_eq!(run("grep NoNewPrivs /proc/self/status").await.stdout_text().trim(), "NoNewPrivs:\t1");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bombs_and_memory_hogs_are_contained() {
    let sb = builder().pids_limit(64).memory_mb(64).create().await.unwrap();
    let bomb =
        sb.exec(["sh", "-c", "for i in $(seq 200); do sleep 30 & done; wait"]).timeout(Duration::from_secs(60)).await;
    let bomb = match bomb {
        Ok(r) => r,
        Err(Error::Timeout { result, .. }) => *result,
        Err(e) => panic!("{e}"),
    };
    assert!(
        bomb.stderr_text().contains("fork") || bomb.stderr_text().contains("Resource temporarily unavailable"),
        "{}",
        bomb.stderr_text()
    );
    let hog = sb.exec(["python3", "-c", "a = bytearray(512 << 20); print('survived')"]).await.unwrap();
    assert_eq!(hog.returncode, -9, "the hog is OOM-killed: {hog:?}");
    assert!(hog.stdout.is_empty());
    // The sandbox and the engine are still healthy.
    assert_eq!(sb.exec(["echo", "alive"]).await.unwrap().stdout, b"alive\n");
    let other = sandbox().await;
    assert_eq!(other.exec(["echo", "fine"]).await.unwrap().stdout, b"fine\n");
    let (sb_id, other_id) = (sb.id().to_string(), other.id().to_string());
    sb.stop().await.unwrap();
    other.stop().await.unwrap();
    assert_eq!(leftovers(&sb_id), Vec::<String>::new());
    assert_eq!(leftovers(&other_id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sandboxes_are_refused_with_typed_errors() {
    // A registry on loopback with nothing listening: tests never reach out past 127.0.0.1.
    match builder().image("127.0.0.1:9/team/python:3.11").create().await {
        Err(Error::SandboxFailed { message }) => {
            assert!(message.contains("python:3.11"), "{message}")
        }
        other => panic!("expected SandboxFailed, got {other:?}"),
    }
    match builder().command("no-such-init").create().await {
        Err(Error::CommandNotFound { message }) => {
            assert!(message.contains("no-such-init"), "{message}")
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    match builder().cpu(-1.0).create().await {
        Err(Error::InvalidArgument(m)) => assert!(m.starts_with("cpus"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let failed = client()
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.command.first().map(String::as_str) == Some("no-such-init"))
        .collect::<Vec<_>>();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].state, SandboxState::Failed);
    assert_eq!(leftovers(&failed[0].id), Vec::<String>::new());
    // Its log is empty and says why: the main command never started.
    let log = hangar::Sandbox::from_info(&client(), &failed[0]).logs().collect().await.unwrap();
    assert!(log.data.is_empty());
    match log.end.map(|e| e.ending) {
        Some(hangar::Ending::FailedToStart(f)) => assert!(f.message.contains("no-such-init"), "{f:?}"),
        other => panic!("expected the log to end with the start failure, got {other:?}"),
    }
}

#[test]
fn the_blocking_facade_runs_execs_and_stops_on_drop() {
    let sb = hangar::blocking::Sandbox::create(builder()).unwrap();
    let id = sb.id().to_string();
    sb.write_file("hello.py", "print('hello from blocking')").unwrap();
    let mut chunks = vec![];
    let r = sb.exec(["python3", "hello.py"]).on_stdout(|c| chunks.extend_from_slice(c)).run_blocking().unwrap();
    assert_eq!(r.stdout_text(), "hello from blocking\n");
    assert_eq!(chunks, r.stdout);
    assert_eq!(sb.read_file("hello.py").unwrap(), b"print('hello from blocking')");
    drop(sb);
    assert_eq!(leftovers(&id), Vec::<String>::new(), "dropping the blocking handle stops the sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_a_request_id_is_idempotent() {
    let rid = format!("retry-{}-{:?}", std::process::id(), Instant::now());
    let (a, b) = tokio::join!(builder().request_id(&rid).create(), builder().request_id(&rid).create());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id(), b.id(), "concurrent retries get the same sandbox");
    let c = builder().request_id(&rid).create().await.unwrap();
    assert_eq!(c.id(), a.id());
    let other = builder().request_id(format!("{rid}-other")).create().await.unwrap();
    assert_ne!(other.id(), a.id());
    let ours = client().list().await.unwrap().into_iter().filter(|i| i.id == a.id()).count();
    assert_eq!(ours, 1);
    a.stop().await.unwrap();
    other.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_upload_source_is_a_local_error_on_both_backends() {
    let sb = sandbox().await;
    let mut short: &[u8] = b"only eleven";
    match sb.write_file_from("/tmp/short", &mut short, 100).await {
        Err(Error::LocalIo(m)) => assert!(m.contains("/tmp/short") && m.contains("11 of 100"), "{m}"),
        other => panic!("expected LocalIo, got {other:?}"),
    }
    let mut whole: &[u8] = b"exactly";
    sb.write_file_from("/tmp/whole", &mut whole, 7).await.unwrap();
    assert_eq!(sb.read_file("/tmp/whole").await.unwrap(), b"exactly");
    sb.stop().await.unwrap();
}
