//! A sandbox's log on every backend: its main command's output journaled like an exec's (live, in the order
//! written, by offset or tail), readable after the sandbox ended and after its agent died, gone with it.

use crate::common::*;
use hangar::{Ending, Error, ExecEvent};
use std::time::{Duration, Instant};

/// Waits (up to 10 s) until the sandbox's end is recorded.
async fn ended(sb: &hangar::Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut info = sb.info().await.unwrap();
    while !info.state.is_final() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        info = sb.info().await.unwrap();
    }
    assert!(info.state.is_final(), "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_commands_log_is_live_ordered_resumable_and_outlives_the_sandbox() {
    let script = "echo one; echo two >&2; printf three; sleep 1.5; echo; echo four; exit 3";
    let sb = builder().command("sh").args(["-c", script]).create().await.unwrap();
    // Followed: the first lines arrive while the command still sleeps, then the rest and the end.
    let mut s = sb.logs().follow(true).start().await.unwrap();
    let (mut text, mut first_at, mut exit) = (String::new(), None, None);
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(20), s.next_event()).await.unwrap().unwrap() {
        match ev {
            ExecEvent::Output { data, .. } => {
                text.push_str(&String::from_utf8_lossy(&data));
                if text.contains("three") {
                    first_at.get_or_insert_with(|| (Instant::now(), std::time::SystemTime::now()));
                }
            }
            ExecEvent::Gap { .. } => panic!("a gap in a short log"),
            ExecEvent::Exit(end) => exit = Some((end, Instant::now())),
        }
    }
    let (end, ended_at) = exit.expect("a followed log ends with the main command's end");
    assert_eq!(text, "one\ntwo\nthree\nfour\n", "stdout and stderr in the order written");
    assert_eq!(end.ending, Ending::Exited { code: 3 });
    let (first_at, first_time) = first_at.unwrap();
    let lead = ended_at - first_at;
    assert!(lead > Duration::from_millis(700), "the first lines arrived only {lead:?} before the end: not live");
    assert_eq!(s.position(), text.len() as u64);

    // After the end (whatever the backend took to record it), the log is all there, by offset and by tail.
    ended(&sb).await;
    let all = sb.logs().collect().await.unwrap();
    assert_eq!(all.text(), text);
    assert_eq!(all.end.as_ref().map(|e| &e.ending), Some(&Ending::Exited { code: 3 }));
    assert_eq!(all.next_offset, text.len() as u64);
    assert_eq!(sb.logs().from_offset(4).collect().await.unwrap().text(), "two\nthree\nfour\n");
    assert_eq!(sb.logs().tail_lines(2).collect().await.unwrap().text(), "three\nfour\n");
    assert_eq!(sb.logs().from_offset(text.len() as u64).collect().await.unwrap().text(), "");
    // By time: what was written after the sleep began (the log keeps when its bytes came; on Kubernetes an
    // ended sandbox's log is the container log, which knows when each line ended, so "three" counts from its
    // newline).
    let mid = first_time + Duration::from_millis(500);
    let after_mid = if crate::BACKEND == Backend::Kubernetes { "three\nfour\n" } else { "\nfour\n" };
    assert_eq!(sb.logs().since(mid).collect().await.unwrap().text(), after_mid);
    assert_eq!(sb.logs().since(first_time - Duration::from_secs(60)).collect().await.unwrap().text(), text);
    let id = sb.id().to_string();
    sb.delete().await.unwrap();
    let again = hangar::Sandbox::from_id_with(&client(), &id).await;
    assert!(matches!(again, Err(Error::NotFound { .. })), "{:?}", again.err());
    assert!(!state_dir().join("sandboxes/.logs").join(&id).exists(), "the log went with the sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_read_as_it_stands_stops_at_what_was_there_and_is_no_exec() {
    let script = "for i in 1 2 3; do echo line-$i; done; sleep infinity";
    let sb = builder().command("sh").args(["-c", script]).create().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = sb.logs().collect().await.unwrap();
    while log.text() != "line-1\nline-2\nline-3\n" {
        assert!(Instant::now() < deadline, "{:?}", log.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = sb.logs().collect().await.unwrap();
    }
    // Not following: it returns at once although the command runs on, and without an end.
    assert_eq!(log.end, None);
    assert_eq!(sb.logs().tail_lines(1).collect().await.unwrap().text(), "line-3\n");
    // The main command is the sandbox's log, not an exec of anyone's, and its id is taken.
    assert!(sb.execs().await.unwrap().is_empty());
    let taken = sb.exec(["true"]).id("main").await;
    assert!(matches!(&taken, Err(Error::InvalidArgument(m)) if m.contains("main")), "{taken:?}");
    // While following, a stop ends the log with the main command's end (SIGTERM killed the shell).
    let mut s = sb.logs().follow(true).from_offset(log.next_offset).start().await.unwrap();
    sb.stop_with_grace(Duration::from_millis(200)).await.unwrap();
    let mut end = None;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(20), s.next_event()).await.unwrap().unwrap() {
        match ev {
            ExecEvent::Exit(e) => end = Some(e),
            other => panic!("nothing more was written: {other:?}"),
        }
    }
    let end = end.expect("an end");
    assert!(matches!(end.ending, Ending::Signaled { .. }), "{end:?}");
    assert_eq!(end.bytes[0], log.next_offset);
    sb.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_a_sandbox_whose_agent_died_is_still_read_and_says_so() {
    let sb = builder().command("sh").args(["-c", "echo before-the-crash; sleep infinity"]).create().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sb.logs().collect().await.unwrap().data.is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent = agent_pid(sb.id());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent), nix::sys::signal::Signal::SIGKILL).unwrap();
    ended(&sb).await;
    let log = sb.logs().collect().await.unwrap();
    assert_eq!(log.text(), "before-the-crash\n");
    let end = log.end.expect("an end");
    assert_eq!(end.ending, Ending::SandboxGone, "the end is not known: it says so");
    assert_eq!(end.bytes[0], log.data.len() as u64);
    sb.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_without_a_command_idles_stops_at_once_and_has_an_empty_log() {
    let sb = hangar::Sandbox::builder().client(&client()).create().await.unwrap();
    assert_eq!(sb.info().await.unwrap().command, Vec::<String>::new());
    assert_eq!(sb.exec(["echo", "up"]).check(true).await.unwrap().stdout_text(), "up\n");
    let mut follow = sb.logs().follow(true).start().await.unwrap();
    // Nothing to wait for but its processes: the stop does not sit out its grace.
    let t = Instant::now();
    let info = sb.stop_with_grace(Duration::from_secs(30)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "the stop took {:?}", t.elapsed());
    assert_eq!((info.state, info.exit_code, info.exit_signal), (hangar::SandboxState::Terminated, None, None));
    match tokio::time::timeout(Duration::from_secs(20), follow.next_event()).await.unwrap().unwrap() {
        Some(ExecEvent::Exit(end)) => assert_eq!((end.ending, end.bytes), (Ending::SandboxGone, [0, 0])),
        other => panic!("an empty log ends with the sandbox: {other:?}"),
    }
    assert_eq!(sb.logs().collect().await.unwrap().data, b"");
    assert_eq!(leftovers(sb.id()), Vec::<String>::new());
    // Nothing of an empty log was ever on disk (on this machine), so there is nothing to keep either.
    assert!(!state_dir().join("sandboxes/.logs").join(sb.id()).exists());
    sb.delete().await.unwrap();
}
