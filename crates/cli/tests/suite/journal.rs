//! The exec journal on every backend: execs as objects (ids, attach, resume by offset), stdin streaming,
//! PTY, merged output, typed endings, per-exec accounting, backpressure, gaps, retention.

use crate::common::*;
use hangar::{Ending, Error, ExecEvent, ExecHandle, OnDisconnect, OutputStream, StartFailureKind};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// Reads events until the terminal output contains `want`; returns everything read.
async fn read_until(h: &mut ExecHandle, want: &str, seen: &mut String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        assert!(Instant::now() < deadline, "never saw {want:?}; got {seen:?}");
        match tokio::time::timeout(Duration::from_secs(20), h.next_event()).await {
            Ok(Ok(Some(ExecEvent::Output { data, .. }))) => seen.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
        }
    }
}

/// Numbered lines: what `seq 1 n` prints.
fn seq(n: u64) -> Vec<u8> {
    (1..=n).flat_map(|i| format!("{i}\n").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_streams_100_mib_through_sha256sum_and_ends_once() {
    let sb = sandbox().await;
    // Reads to the end, hashes, then reads again: after the one end of file there is nothing more.
    let script = "import sys,hashlib\nb=sys.stdin.buffer\nh=hashlib.sha256()\nn=0\nwhile True:\n    c=b.read(1<<20)\n    if not c: break\n    h.update(c); n+=len(c)\nprint(h.hexdigest(), n, repr(b.read()))\n";
    let h = sb.exec(["python3", "-c", script]).open_stdin().start().await.unwrap();
    let input = h.input();
    let mut want = Sha256::new();
    let writer = tokio::spawn(async move {
        let mut block = vec![0u8; 1 << 20];
        for i in 0..100u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32).wrapping_mul(2654435761).wrapping_add(i).to_le_bytes()[1];
            }
            want.update(&block);
            input.write(&block).await.unwrap();
        }
        input.close().await.unwrap();
        // A second close changes nothing: the command has had its one end of file.
        let _ = input.close().await;
        format!("{:x}", want.finalize())
    });
    let r = h.wait().await.unwrap();
    let want = writer.await.unwrap();
    assert_eq!(r.stdout_text().trim(), format!("{want} {} b''", 100 << 20));
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_session_runs_python_interactively_and_sees_resizes() {
    let sb = sandbox().await;
    let mut h = sb.exec(["python3", "-q"]).tty(24, 80).start().await.unwrap();
    let input = h.input();
    let mut seen = String::new();
    read_until(&mut h, ">>> ", &mut seen).await;
    input.write("print(6 * 7)\n").await.unwrap();
    read_until(&mut h, "42\r\n>>> ", &mut seen).await;
    input.write("import os, subprocess; print(os.isatty(0), os.get_terminal_size())\n").await.unwrap();
    read_until(&mut h, "True os.terminal_size(columns=80, lines=24)", &mut seen).await;
    h.resize(50, 132).await.unwrap();
    input.write("subprocess.run(['stty', 'size'])\n").await.unwrap();
    read_until(&mut h, "50 132\r\n", &mut seen).await;
    input.write("exit(5)\n").await.unwrap();
    let r = h.wait().await.unwrap();
    assert_eq!(r.returncode, 5);
    assert!(r.stderr.is_empty(), "a terminal is one stream");
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_mode_keeps_the_exact_interleaving() {
    let sb = sandbox().await;
    let r = sb.exec(["sh", "-c", "for i in $(seq 1 3000); do echo $i; echo e$i >&2; done"]).merged(true).await.unwrap();
    let want: String = (1..=3000).map(|i| format!("{i}\ne{i}\n")).collect();
    assert_eq!(r.stdout_text(), want);
    assert!(r.stderr.is_empty());
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endings_are_typed() {
    let sb = builder().memory_mb(64).create().await.unwrap();
    let r = sb.exec(["sh", "-c", "exit 3"]).await.unwrap();
    assert_eq!((r.returncode, &r.ending), (3, &Ending::Exited { code: 3 }));
    let r = sb.exec(["sh", "-c", "kill -TERM $$"]).await.unwrap();
    assert_eq!((r.returncode, &r.ending), (-15, &Ending::Signaled { signal: 15 }));
    match sb.exec(["sleep", "10"]).timeout(Duration::from_millis(200)).await {
        Err(Error::Timeout { result, .. }) => assert_eq!((result.ending, result.returncode), (Ending::TimedOut, -9)),
        other => panic!("{other:?}"),
    }
    let h = sb.exec(["sleep", "10"]).start().await.unwrap();
    h.kill().await.unwrap();
    assert_eq!(h.wait().await.unwrap().ending, Ending::Cancelled);
    let hog = "x = bytearray(256 << 20); print(len(x))";
    let r = sb.exec(["python3", "-c", hog]).await.unwrap();
    assert_eq!((&r.ending, r.returncode), (&Ending::OomKilled, -9), "stderr: {}", r.stderr_text());
    // Start failures are typed, and the type crosses every boundary (agent, engine, gRPC) unchanged.
    sb.exec(["sh", "-c", "printf 'echo hi' > /tmp/plain; printf '\\001\\002junk' > /tmp/junk; chmod +x /tmp/junk"])
        .check(true)
        .await
        .unwrap();
    for (argv, kind, names) in [
        ("no-such-program", StartFailureKind::NotFound, "no-such-program"),
        ("/tmp/plain", StartFailureKind::PermissionDenied, "/tmp/plain"),
        ("/tmp/junk", StartFailureKind::NotExecutable, "/tmp/junk"),
    ] {
        let mut h = sb.exec([argv, "x"]).start().await.unwrap();
        match h.next_event().await.unwrap() {
            Some(ExecEvent::Exit(end)) => match &end.ending {
                Ending::FailedToStart(f) => {
                    assert_eq!(f.kind, kind, "{argv}: {}", f.message);
                    assert!(f.message.contains(names), "{}", f.message);
                    assert_eq!(end.returncode(), 127);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(sb.exec(["no-such-program"]).await, Err(Error::CommandNotFound { .. })));
    // The sandbox ending under a running exec is its own ending, never a success.
    let running = {
        let sb = sb.clone();
        tokio::spawn(async move { sb.exec(["sh", "-c", "echo started; sleep 100"]).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sb.stop_with_grace(Duration::ZERO).await.unwrap();
    match running.await.unwrap() {
        Err(Error::SandboxTerminated { detail, .. }) => assert!(detail.contains("ended"), "{detail}"),
        other => panic!("expected SandboxTerminated, got {other:?}"),
    }
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exec_reports_its_wall_time_cpu_and_peak_memory() {
    let sb = sandbox().await;
    // A fixed amount of pure computation (user time), and 120 MiB touched (peak memory).
    let busy = "x = bytearray(120 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nfor _ in range(40): sum(range(1000000))\n";
    let r = sb.exec(["python3", "-c", busy]).await.unwrap();
    let u = r.usage;
    assert!(u.cpu_user_us >= 200_000, "{u:?}");
    assert!(
        u.wall_ms * 1000 >= (u.cpu_user_us + u.cpu_sys_us) / 2,
        "one busy thread cannot use much more CPU than wall time: {u:?}"
    );
    assert!(u.peak_memory_bytes >= 120 << 20, "{u:?}");
    let small = sb.exec(["true"]).await.unwrap().usage;
    assert!(small.peak_memory_bytes < 60 << 20 && small.cpu_user_us < 300_000, "{small:?}");
    sb.stop().await.unwrap();
}

/// An exec's cgroup, once its exec ended and its processes are gone, is reset and kept for a later exec (or
/// spare helper): exec after exec, no cgroup is made and removed (a removed memory cgroup lingers in the kernel,
/// dying, while anything charged to it stays cached), and each exec's figures and tree kill are still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_cgroups_are_reused_and_each_exec_still_measures_only_itself() {
    let sb = sandbox().await;
    // 64 MiB of page cache stays charged to this exec's cgroup, and a process it left behind is killed with it.
    let first = "head -c 67108864 /dev/zero > /tmp/cached; sleep 1000 & echo $!";
    let r = sb.exec(["sh", "-c", first]).check(true).await.unwrap();
    assert!(r.usage.peak_memory_bytes >= 64 << 20, "{:?}", r.usage);
    let left = String::from_utf8(r.stdout).unwrap().trim().to_string();
    let alive = format!("kill -0 {left} 2>/dev/null && echo alive; true");
    // Killed when the exec ended; gone (dead and reaped, which `kill -0` cannot tell apart) a moment later.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !sb.exec(["sh", "-c", &alive]).await.unwrap().stdout.is_empty() {
        assert!(Instant::now() < deadline, "the first exec's left-behind process outlived it");
    }
    let mut names = exec_cgroups(sb.id());
    for _ in 0..20 {
        let r = sb.exec(["sh", "-c", &alive]).await.unwrap();
        assert_eq!(r.stdout, b"", "the first exec's left-behind process came back");
        assert!(r.usage.peak_memory_bytes < 32 << 20, "an earlier exec's page cache counted: {:?}", r.usage);
        assert!(r.usage.cpu_user_us < 100_000, "{:?}", r.usage);
        names.extend(exec_cgroups(sb.id()));
    }
    assert!(!names.is_empty() && names.len() <= 4, "exec cgroups seen across 21 execs: {names:?}");
    sb.stop().await.unwrap();
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

/// Retained execs cost the agent no descriptors, and its spare exec helper keeps working however many
/// execs came before (it once broke for good past ~45 retained execs, making every later exec ~10 ms slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_retained_execs_leave_the_agent_lean() {
    let sb = sandbox().await;
    sb.exec(["true"]).check(true).await.unwrap();
    let agent = agent_pid(sb.id());
    // Not counting the files of the cgroups it keeps for later execs (a few at most, however many execs ran).
    let fds = || -> Vec<String> {
        use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
        let cgroup = |fd: &std::path::Path| {
            statfs(fd).is_ok_and(|s| [CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC].contains(&s.filesystem_type()))
        };
        let fds = std::fs::read_dir(format!("/proc/{agent}/fd")).unwrap().flatten().map(|e| e.path());
        let fds = fds.filter(|fd| !cgroup(fd)).filter_map(|fd| std::fs::read_link(fd).ok());
        fds.map(|link| link.display().to_string()).collect()
    };
    assert_eq!(spare_helper_waits(agent).await, spares_expected(), "a spare helper waits for the next exec");
    let before = fds();
    for i in 0..150 {
        let r = sb.exec(["echo", &i.to_string()]).check(true).await.unwrap();
        assert_eq!(r.stdout_text(), format!("{i}\n"));
    }
    assert_eq!(sb.execs().await.unwrap().len(), 151, "every exec is retained");
    assert_eq!(spare_helper_waits(agent).await, spares_expected(), "after 150 more execs, as before");
    let after = fds();
    assert!(
        after.len() <= before.len() + 4,
        "the agent's descriptors grew with retained execs: {before:?} → {after:?}"
    );
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_replays_from_any_offset_and_ids_make_retries_idempotent() {
    let sb = sandbox().await;
    let n = 400_000;
    let cmd = format!("seq 1 {n}; echo done >&2; sleep 0.5; echo tail");
    let mut want = seq(n);
    want.extend_from_slice(b"tail\n");
    let mut h = sb.exec(["sh", "-c", &cmd]).id("numbers").start().await.unwrap();
    assert_eq!(h.id(), "numbers");
    let mut got = Vec::new();
    while got.len() < 100_000 {
        if let Some(ExecEvent::Output { stream: OutputStream::Stdout, data, .. }) = h.next_event().await.unwrap() {
            got.extend_from_slice(&data);
        }
    }
    let [out, err] = h.position();
    assert_eq!(out, got.len() as u64);
    drop(h); // a client that leaves: the command goes on (the default policy)
             // A second reader from the start, concurrently, gets everything.
    let whole = {
        let sb = sb.clone();
        tokio::spawn(async move { sb.attach("numbers").await.unwrap() })
    };
    let rest = sb.attach("numbers").from_offsets(out, err).await.unwrap();
    got.extend_from_slice(&rest.stdout);
    assert!(got == want, "resumed output differs ({} vs {} bytes)", got.len(), want.len());
    let whole = whole.await.unwrap();
    assert!(whole.stdout == want && whole.stderr == b"done\n");
    assert_eq!(whole.exec_id, "numbers");
    // Starting the same id again finds the finished exec instead of running it twice.
    let again = sb.exec(["sh", "-c", &cmd]).id("numbers").await.unwrap();
    assert!(again.stdout == want);
    let once = "echo ran >> /tmp/count; cat /tmp/count";
    let a = sb.exec(["sh", "-c", once]).id("once").await.unwrap();
    let b = sb.exec(["sh", "-c", once]).id("once").await.unwrap();
    assert_eq!((a.stdout_text(), b.stdout_text()), ("ran\n".into(), "ran\n".into()));
    match sb.exec(["true"]).id("once").await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("once"), "{m}"),
        other => panic!("an id reused for another command must be refused: {other:?}"),
    }
    match sb.attach("no-such-exec").await {
        Err(Error::ExecNotFound { message }) => assert!(message.contains("no-such-exec"), "{message}"),
        other => panic!("{other:?}"),
    }
    let listed = sb.execs().await.unwrap();
    let numbers = listed.iter().find(|x| x.id == "numbers").unwrap();
    assert_eq!(numbers.written, [want.len() as u64, 5]);
    assert!(matches!(numbers.end.as_ref().unwrap().ending, Ending::Exited { code: 0 }));
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_cap_head_and_tail_survive_and_the_gap_is_explicit() {
    let sb = sandbox().await;
    let cmd = "seq 1 2000000; echo THE END; echo 'why it failed' >&2; exit 1";
    let h = sb.exec(["sh", "-c", cmd]).journal_cap(1 << 20).id("chatty").start().await.unwrap();
    drop(h); // nobody attached: the journal absorbs up to its cap and drops the middle
    let deadline = Instant::now() + Duration::from_secs(30);
    while sb.execs().await.unwrap().iter().any(|x| x.id == "chatty" && x.end.is_none()) {
        assert!(Instant::now() < deadline, "the command was stalled although nobody was reading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut h = sb.attach("chatty").start().await.unwrap();
    let (mut head, mut tail, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    let end = loop {
        match h.next_event().await.unwrap().unwrap() {
            ExecEvent::Output { stream: OutputStream::Stdout, data, .. } if gaps.is_empty() => {
                head.extend_from_slice(&data)
            }
            ExecEvent::Output { stream: OutputStream::Stdout, data, .. } => tail.extend_from_slice(&data),
            ExecEvent::Output { data, .. } => assert_eq!(&data[..], b"why it failed\n"),
            ExecEvent::Gap { stream, from, to } => gaps.push((stream, from, to)),
            ExecEvent::Exit(end) => break end,
        }
    };
    let all = seq(2_000_000);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (stream, from, to) = gaps[0];
    assert_eq!((stream, from, head.len() as u64), (OutputStream::Stdout, head.len() as u64, from));
    assert!(head[..] == all[..head.len()], "the head is intact");
    assert!(tail.ends_with(b"THE END\n") && tail.len() as u64 + to == end.bytes[0], "the tail is intact up to the end");
    assert!(all[to as usize..] == tail[..tail.len() - 8], "the tail holds exactly the bytes after the gap");
    assert!(head.len() + tail.len() <= (1 << 20) + (1 << 20), "the journal kept about its cap");
    match sb.attach("chatty").await {
        Err(Error::IncompleteOutput { result, detail, .. }) => {
            assert!(detail.contains(&format!("{from}..{to}")), "{detail}");
            assert_eq!(result.returncode, 1);
            assert_eq!(result.stderr, b"why it failed\n");
        }
        other => panic!("a result with a hole must not pass as complete: {other:?}"),
    }
    sb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policies_and_retention() {
    let sb = sandbox().await;
    let h = sb
        .exec(["sleep", "1000"])
        .id("doomed")
        .on_disconnect(OnDisconnect::Kill { grace_ms: 300 })
        .start()
        .await
        .unwrap();
    let kept =
        sb.exec(["sh", "-c", "sleep 1; echo kept"]).id("kept").retain(Duration::from_secs(1)).start().await.unwrap();
    drop((h, kept));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let doomed = sb.execs().await.unwrap().into_iter().find(|x| x.id == "doomed").unwrap();
    assert!(doomed.end.is_none(), "still within its grace");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let execs = sb.execs().await.unwrap();
        let doomed = execs.iter().find(|x| x.id == "doomed").unwrap();
        if let Some(end) = &doomed.end {
            assert_eq!(end.ending, Ending::Cancelled);
            break;
        }
        assert!(Instant::now() < deadline, "nobody re-attached, yet it kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = sb.attach("kept").await.unwrap();
    assert_eq!(r.stdout, b"kept\n", "a detached exec with the default policy finished and kept its output");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match sb.attach("kept").await {
        Err(Error::ExecExpired { message }) => assert!(message.contains("kept"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(sb.execs().await.unwrap().iter().any(|x| x.id == "kept" && x.expired));
    sb.stop().await.unwrap();
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
}

/// A full pids limit is a typed, named start failure (not "command not found"), and the sandbox works again
/// once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pids_limit_is_a_start_failure_and_passes() {
    let sb = hangar::Sandbox::builder()
        .client(&client())
        .pids_limit(24)
        .command("sleep")
        .args(["infinity"])
        .create()
        .await
        .unwrap();
    sb.exec(["true"]).check(true).await.unwrap();
    // The hog takes the waiting spare helper (if any), so the exec after it has to start a process of its own.
    let agent = agent_pid(sb.id());
    assert_eq!(spare_helper_waits(agent).await, spares_expected());
    let fill = "import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(1000)\n            os._exit(0)\n    except OSError:\n        break\nprint('full', flush=True)\ntime.sleep(1000)\n";
    let mut hog = sb.exec(["python3", "-c", fill]).start().await.unwrap();
    while let Some(ev) = hog.next_event().await.unwrap() {
        if matches!(ev, hangar::ExecEvent::Output { ref data, .. } if data.starts_with(b"full")) {
            break;
        }
    }
    // The first may still find a spare helper made just before the limit filled up; the next cannot.
    let mut failed = None;
    for _ in 0..2 {
        match sb.exec(["true"]).await {
            Err(Error::StartFailed { message }) => {
                failed = Some(message);
                break;
            }
            Ok(r) => assert_eq!(r.returncode, 0),
            other => panic!("expected StartFailed, got {other:?}"),
        }
    }
    let message = failed.expect("an exec cannot start while the pids limit is full");
    assert!(message.contains("true") && message.contains("process limit"), "{message}");
    hog.kill().await.unwrap();
    assert_eq!(hog.wait().await.unwrap().ending, Ending::Cancelled);
    // Its orphans are reaped by the sandbox's init a moment later: retry, as a caller of StartFailed would.
    let mut again = sb.exec(["echo", "room again"]).check(true).await;
    for _ in 0..100 {
        if !matches!(again, Err(Error::StartFailed { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        again = sb.exec(["echo", "room again"]).check(true).await;
    }
    assert_eq!(again.unwrap().stdout_text(), "room again\n");
    // The spare helper comes back (if making one failed meanwhile, after a pause: execs trigger it).
    let deadline = Instant::now() + Duration::from_secs(12);
    while spares_expected() && !spare_helper_waits(agent).await {
        assert!(Instant::now() < deadline, "the spare exec helper does not come back");
        sb.exec(["true"]).check(true).await.unwrap();
    }
    sb.stop().await.unwrap();
}

/// An exec's journal holds what its clients have not read, not a copy of all they have: streaming 269 MB to a
/// client goes round the default cap's ring twice (on this host, the file never holds more than the cap), and
/// a reader that attaches later gets the head, a gap that says exactly what is gone, and at least the last
/// 64 MiB delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_exec_keeps_its_head_and_recent_output_and_a_late_reader_is_told_the_gap() {
    const MIB: u64 = 1 << 20;
    let sb = sandbox().await;
    let n = 30_000_000;
    let all = seq(n);
    let r = sb.exec(["seq", "1", &n.to_string()]).id("streamed").check(true).await.unwrap();
    assert!(r.stdout == all, "the live client got every byte");
    if crate::BACKEND != Backend::Kubernetes {
        use std::os::unix::fs::MetadataExt;
        let file = state_dir().join("sandboxes").join(sb.id()).join("execs/streamed/stdout");
        let held = std::fs::metadata(&file).unwrap().blocks() * 512;
        let cap = 128 * MIB; // the default
        assert!(held <= cap + MIB, "{} holds {held} bytes of a {} byte stream", file.display(), all.len());
    }
    let mut h = sb.attach("streamed").start().await.unwrap();
    let (mut head, mut rest, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        match h.next_event().await.unwrap().unwrap() {
            ExecEvent::Output { data, .. } if gaps.is_empty() => head.extend_from_slice(&data),
            ExecEvent::Output { data, .. } => rest.extend_from_slice(&data),
            ExecEvent::Gap { stream, from, to } => gaps.push((stream, from, to)),
            ExecEvent::Exit(end) => break assert_eq!(end.bytes[0], all.len() as u64),
        }
    }
    assert_eq!(head.len() as u64, 8 * MIB, "the head");
    assert!(head[..] == all[..head.len()]);
    let &[(OutputStream::Stdout, from, to)] = &gaps[..] else { panic!("one gap of stdout: {gaps:?}") };
    assert_eq!(from, 8 * MIB);
    assert!(to > from && to <= all.len() as u64 - 64 * MIB, "the last 64 MiB delivered are kept: gap {from}..{to}");
    assert!(rest[..] == all[to as usize..], "everything after the gap");
    sb.stop().await.unwrap();
}

/// An exec that asked for no retention, whose output its client read to the end, frees its journal as it
/// ends: a stream of 64 MiB leaves no file behind. One kept, or one that printed nothing (whose journal never
/// had files), is still read after its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_unretained_exec_leaves_no_journal() {
    let sb = sandbox().await;
    let r = sb
        .exec(["sh", "-c", "head -c 67108864 /dev/zero"])
        .id("unretained")
        .retain(Duration::ZERO)
        .capture(false)
        .check(true)
        .await
        .unwrap();
    assert_eq!(r.returncode, 0);
    let dir = state_dir().join("sandboxes").join(sb.id()).join("execs/unretained");
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} is still there", dir.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same exec with the default retention keeps its journal (for a later attach).
    sb.exec(["echo", "kept"]).id("retained").check(true).await.unwrap();
    let kept = state_dir().join("sandboxes").join(sb.id()).join("execs/retained/stdout");
    assert_eq!(std::fs::read(&kept).unwrap(), b"kept\n");
    // One that printed nothing never made journal files at all, and is still read, as empty, with its end.
    let quiet = sb.exec(["true"]).id("quiet").check(true).await.unwrap();
    assert!(!state_dir().join("sandboxes").join(sb.id()).join("execs/quiet").exists());
    let again = sb.attach("quiet").await.unwrap();
    assert_eq!((again.returncode, again.stdout.len(), again.stderr.len()), (0, 0, 0), "{quiet:?}");
    sb.stop().await.unwrap();
}
