//! The `hangar` command line, run as a real process: live output, exit codes, state across invocations.

mod common;

/// Which backend `common::client()` gives.
pub const BACKEND: common::Backend = common::Backend::Embedded;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn hangar() -> Command {
    require_root();
    let mut c = Command::new(env!("CARGO_BIN_EXE_hangar"));
    c.env("HANGAR_STATE_DIR", state_dir()).env("HANGAR_AGENT_BIN", agent_bin()).env_remove("HANGAR_URL");
    c
}

fn run(args: &[&str]) -> Output {
    hangar().args(args).output().expect("hangar runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_streams_live_and_passes_the_exit_code_through() {
    let script = "import sys,time\nfor i in range(5): print(i, flush=True); time.sleep(0.3)\nprint('oops', file=sys.stderr)\nsys.exit(3)";
    let mut child = hangar()
        .args(["run", "--", "python3", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = vec![];
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        lines.push((Instant::now(), line.unwrap()));
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(),
        ["0", "1", "2", "3", "4"],
        "stderr: {stderr}"
    );
    for w in lines.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_millis(200),
            "lines were not printed live: gap {:?}",
            w[1].0 - w[0].0
        );
    }
    assert_eq!(stderr, "oops\n");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn sandboxes_persist_across_invocations() {
    let out = run(&["create", "--tag", "team=ml", "--memory", "256"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(id.starts_with("sb-"), "{id}");
    let listed = |id: &str| -> serde_json::Value {
        let out = run(&["ls", "--json"]);
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["id"] == id)
            .expect("listed")
    };
    let v = listed(&id);
    assert_eq!(v["state"], "running");
    assert_eq!(v["tags"]["team"], "ml");
    assert_eq!(v["memory_bytes"], 256 << 20);

    let out = run(&["exec", &id, "--", "sh", "-c", "echo in; echo err >&2; exit 5"]);
    assert_eq!((out.status.code(), text(&out.stdout), text(&out.stderr)), (Some(5), "in\n".into(), "err\n".into()));

    let local = state_dir().join("cp-test.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    assert!(run(&["cp", local.to_str().unwrap(), &format!("{id}:/data/in.txt")]).status.success());
    let out = run(&["exec", &id, "--", "cat", "/data/in.txt"]);
    assert_eq!(text(&out.stdout), "copied in\n");
    let back = state_dir().join("cp-back.txt");
    assert!(run(&["cp", &format!("{id}:/data/in.txt"), back.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");

    let out = run(&["stop", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = listed(&id);
    assert_eq!(v["state"], "terminated");
    assert_eq!(v["end_reason"], "stopped");
    assert_eq!(leftovers(&id), Vec::<String>::new());
    assert!(run(&["rm", &id]).status.success());
    assert!(!text(&run(&["ls"]).stdout).contains(&id));
}

#[test]
fn errors_are_one_clear_line_and_a_non_zero_exit() {
    for (args, needle) in [
        (vec!["exec", "sb-0000000000000000", "--", "true"], "sandbox sb-0000000000000000 not found"),
        (vec!["run", "--", "no-such-command-xyz"], "command not found: no-such-command-xyz"),
        (vec!["run", "--image", "127.0.0.1:9/team/python:3.11", "--", "true"], "127.0.0.1:9/team/python:3.11"),
        (vec!["cp", "a", "b"], "must be SANDBOX_ID:PATH"),
    ] {
        let out = run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hangar: ") && err.contains(needle), "{args:?}: {err}");
    }
    let out = run(&["run", "--timeout", "0.5", "--", "sh", "-c", "echo before; sleep 100"]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(text(&out.stdout), "before\n");
    assert!(text(&out.stderr).contains("timed out"));
}

/// `hangar run ... | head`: like any Unix filter, Hangar stops quietly with 128 + SIGPIPE when its reader
/// goes, and the command in the sandbox is killed with it (its sandbox is stopped).
#[test]
fn a_closed_stdout_ends_quietly_like_a_filter() {
    let mut child = hangar()
        .args(["run", "--", "seq", "1", "100000123"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "1\n");
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out.stderr)), (Some(141), String::new()));
    assert_eq!(host_processes_mentioning("100000123"), Vec::<i32>::new(), "the command dies with its reader");
    // Listing to a closed pipe too (many lines, so that writes happen after the reader left).
    let mut ls = hangar().args(["ls", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(ls.stdout.take());
    let out = ls.wait_with_output().unwrap();
    assert!(matches!(out.status.code(), Some(0 | 141)), "{:?} {}", out.status, text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn execs_detach_attach_list_kill_and_shell_from_the_command_line() {
    let sb = text(&run(&["create"]).stdout).trim().to_string();
    let started = run(&[
        "exec",
        "-d",
        "--exec-id",
        "ticker",
        &sb,
        "--",
        "sh",
        "-c",
        "for i in 1 2 3; do echo t$i; sleep 0.3; done; echo err >&2; exit 4",
    ]);
    assert_eq!(
        (started.status.code(), text(&started.stdout)),
        (Some(0), "ticker\n".into()),
        "{}",
        text(&started.stderr)
    );
    // Attach from the start: the whole output, then the command's exit code.
    let all = run(&["attach", &sb, "ticker"]);
    assert_eq!(
        (all.status.code(), text(&all.stdout), text(&all.stderr)),
        (Some(4), "t1\nt2\nt3\n".into(), "err\n".into())
    );
    // Resume from an offset: exactly the rest.
    let rest = run(&["attach", &sb, "ticker", "--stdout-offset", "3", "--stderr-offset", "3"]);
    assert_eq!((text(&rest.stdout), text(&rest.stderr)), ("t2\nt3\n".into(), "\n".into()));
    let sleeper = run(&["exec", "-d", &sb, "--", "sleep", "1000"]);
    let sleeper = text(&sleeper.stdout).trim().to_string();
    assert_eq!(run(&["kill", &sb, &sleeper]).status.code(), Some(0));
    let killed = run(&["attach", &sb, &sleeper]);
    assert_eq!(killed.status.code(), Some(137), "{}", text(&killed.stderr));
    assert!(text(&killed.stderr).contains("cancelled"), "{}", text(&killed.stderr));
    let listed = text(&run(&["execs", &sb]).stdout);
    assert!(listed.contains("ticker") && listed.contains("exited:4") && listed.contains("cancelled"), "{listed}");
    // stdin from this process, with its end of file.
    let mut child = hangar()
        .args(["exec", "-i", &sb, "--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &[b'x'; 100_000]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout).trim(), "100000");
    // A shell on a terminal in the sandbox (fed from a pipe here, so not in raw mode).
    let mut child = hangar()
        .args(["shell", &sb])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"tty; stty size; exit 3\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{shown} {}", text(&out.stderr));
    assert!(shown.contains("/dev/pts/") && shown.contains("24 80"), "{shown}");
    assert_eq!(run(&["rm", &sb]).status.code(), Some(0));
}

/// The caller's open descriptors never reach the sandbox: a file the shell opened as fd 7 is not readable
/// from inside, and the sandbox's processes hold only their stdio.
#[test]
fn the_callers_descriptors_do_not_pass_into_the_sandbox() {
    let marker = format!("/tmp/hangar-fd-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret via an inherited descriptor").unwrap();
    let bin = env!("CARGO_BIN_EXE_hangar");
    let script = format!(
        "exec 7<{marker}; exec 9>>{marker}; {bin} run -- sh -c 'cat <&7; echo leak >&9; ls /proc/self/fd; ls /proc/1/fd 2>&1 | wc -l'"
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("HANGAR_STATE_DIR", state_dir())
        .env("HANGAR_AGENT_BIN", agent_bin())
        .env_remove("HANGAR_URL")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stdout.contains("host secret"), "the sandbox read the caller's fd 7: {stdout}");
    assert!(stderr.contains("Bad file descriptor") || stderr.contains("bad file descriptor"), "{stderr}");
    assert!(stdout.starts_with("0\n1\n2\n3\n"), "only stdio (and ls's own directory): {stdout}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "host secret via an inherited descriptor",
        "fd 9 was written"
    );
    std::fs::remove_file(&marker).unwrap();
}

/// `hangar ARGS`, its exit status, stderr, and the peak memory (KiB) of the largest child this test process
/// has waited for so far (getrusage of children: an upper bound on this one's).
fn run_measured(args: &[&str]) -> (std::process::ExitStatus, u64, String) {
    let out = hangar().args(args).stdout(Stdio::null()).output().unwrap();
    // SAFETY: a zeroed rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    (out.status, usage.ru_maxrss as u64, text(&out.stderr))
}

/// Files stream both ways: 1 GiB (sparse, with a marker at its end) in and back out arrives whole and stays
/// sparse inside; a 10 GiB sparse file copied out (to /dev/null) and the 1 GiB ones leave the CLI's and the
/// agent's memory small, and the sandbox responsive.
#[test]
fn big_files_copy_both_ways_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    let dir = std::env::temp_dir().join(format!("hangar-bigcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, back) = (dir.join("big"), dir.join("back"));
    sparse_file_with_marker(&src, SIZE);
    let id = text(&run(&["create"]).stdout).trim().to_string();
    let agent = agent_pid(&id);
    let (status, cli_in, err) = run_measured(&["cp", src.to_str().unwrap(), &format!("{id}:/tmp/big")]);
    assert!(status.success(), "{err}");
    let size = run(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "stat -c %s /tmp/big; tail -c 4 /tmp/big; echo; du -k /tmp/big | cut -f1",
    ]);
    let lines: Vec<String> = text(&size.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines[..2], [SIZE.to_string(), "END!".to_string()], "the sandbox has the whole file");
    assert!(lines[2].parse::<u64>().unwrap() < 1024, "the hole stayed a hole: {} KiB on disk", lines[2]);
    let (status, _, err) = run_measured(&["cp", &format!("{id}:/tmp/big"), back.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(has_marker(&back, SIZE), "the copy out is whole");
    let made = run(&["exec", &id, "--", "sh", "-c", "truncate -s 10G /tmp/huge && printf END! >> /tmp/huge"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let (status, cli_out, err) = run_measured(&["cp", &format!("{id}:/tmp/huge"), "/dev/null"]);
    assert!(status.success(), "{err}");
    assert!(std::path::Path::new("/dev/null").exists(), "/dev/null is still there");
    let agent_peak = peak_rss_kib(agent);
    eprintln!("peak RSS: cli in (1 GiB) {cli_in} KiB, cli out (10 GiB) {cli_out} KiB, agent {agent_peak} KiB");
    for (what, kib) in [("cli in", cli_in), ("cli out", cli_out), ("agent", agent_peak)] {
        assert!(kib > 0 && kib < 64 << 10, "{what} peaked at {kib} KiB");
    }
    assert_eq!(text(&run(&["exec", &id, "--", "echo", "responsive"]).stdout), "responsive\n");
    run(&["rm", &id]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `hangar cp` out of and into paths that lead through the agent's descriptors: a clear one-line refusal, exit
/// 125, and no local file made from host content.
#[test]
fn cp_through_a_magic_link_is_refused_clearly() {
    let id = text(&run(&["create"]).stdout).trim().to_string();
    let local = std::env::temp_dir().join(format!("hangar-cp-escape-{}", std::process::id()));
    let out = run(&["cp", &format!("{id}:/proc/self/fd/5/../../../../etc/shadow"), local.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("hangar: ") && err.contains("/proc/self/fd/5") && err.contains("only inside the sandbox"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!local.exists(), "a local file was left");
    std::fs::write(&local, "x").unwrap();
    let up = run(&["cp", local.to_str().unwrap(), &format!("{id}:/proc/1/fd/5/pwned")]);
    assert_eq!(up.status.code(), Some(125), "{}", text(&up.stderr));
    assert!(!state_dir().join("sandboxes").join(&id).join("pwned").exists(), "the upload reached the host");
    std::fs::remove_file(&local).unwrap();
    run(&["rm", &id]);
}

/// `hangar run` removes its sandbox when the command ends, like `docker run --rm`; `--keep` keeps the record.
#[test]
fn run_removes_its_sandbox_unless_asked_to_keep_it() {
    let ids = || -> Vec<String> {
        let out = run(&["ls", "--json"]);
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The sandbox's hostname is its id.
    let out = run(&["run", "--", "hostname"]);
    let gone = text(&out.stdout).trim().to_string();
    assert!(out.status.success() && gone.starts_with("sb-"), "{gone} {}", text(&out.stderr));
    assert!(!ids().contains(&gone), "{gone} is still listed");
    assert!(!state_dir().join("sandboxes").join(&gone).exists());
    let out = run(&["run", "--keep", "--", "hostname"]);
    let kept = text(&out.stdout).trim().to_string();
    assert!(ids().contains(&kept), "{kept} was not kept");
    assert!(run(&["rm", &kept]).status.success());
    assert!(!ids().contains(&kept));
}

#[test]
fn run_with_an_image_whose_own_command_exits_is_like_docker_run() {
    // An image whose command is a shell: without a terminal it exits at once, as python:3.11's `python3` does.
    let archive = common::images::oci_archive(
        "localhost/sh-cmd:1",
        &[(common::images::tar_of(&common::images::userland()), "application/vnd.oci.image.layer.v1.tar")],
        serde_json::json!({"config": {"Cmd": ["/bin/sh", "-c", "echo from the image; exit 0"]}}),
        false,
    );
    assert!(run(&["images", "import", archive.to_str().unwrap()]).status.success());
    // The command given is what runs, every time (it used to race the image's own command and lose).
    for i in 0..50 {
        let out =
            run(&["run", "--image", "localhost/sh-cmd:1", "--", "sh", "-c", &format!("sleep 0.05; echo run-{i}")]);
        assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), format!("run-{i}\n")), "{}", text(&out.stderr));
    }
    // A sandbox without a command idles; asked for, the image's command is its main command, and its log.
    let idle = text(&run(&["create", "--image", "localhost/sh-cmd:1"]).stdout).trim().to_string();
    let own = text(&run(&["create", "--image", "localhost/sh-cmd:1", "--image-command"]).stdout).trim().to_string();
    let state_of = |id: &str| {
        let out = run(&["ls", "--json"]);
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["id"] == id)
            .map(|v| v["state"].as_str().unwrap().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while state_of(&own).as_deref() != Some("completed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state_of(&own).as_deref(), Some("completed"));
    assert_eq!(state_of(&idle).as_deref(), Some("running"), "no command: it idles");
    assert_eq!(text(&run(&["logs", &own]).stdout), "from the image\n");
    assert_eq!(text(&run(&["logs", "--since", "1h", &own]).stdout), "from the image\n");
    let bad = run(&["logs", "--since", "5 minutes", &own]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("90s, 10m"), "{}", text(&bad.stderr));
    assert_eq!(text(&run(&["logs", &idle]).stdout), "");
    let both = run(&["create", "--image", "localhost/sh-cmd:1", "--image-command", "--", "true"]);
    assert!(!both.status.success(), "a command and --image-command together are refused");
    assert!(run(&["rm", &idle, &own]).status.success());
}

/// `HANGAR_PHASES=1 hangar run` says where its time went, phase by phase, on stderr (what `hangar bench
/// --peers` reads); without it, nothing.
#[test]
fn run_says_its_phases_when_asked() {
    let out = hangar().args(["run", "--", "true"]).env("HANGAR_PHASES", "1").output().unwrap();
    assert!(out.status.success());
    let said = text(&out.stderr);
    let line = said.strip_prefix("hangar: phases: ").unwrap_or_else(|| panic!("{said:?}"));
    let phases: Vec<(&str, f64)> =
        line.split_whitespace().map(|kv| kv.split_once('=').map(|(k, ms)| (k, ms.parse().unwrap())).unwrap()).collect();
    let names: Vec<&str> = phases.iter().map(|p| p.0).collect();
    assert_eq!(names, ["open", "create", "exec", "stop", "remove"]);
    assert!(phases.iter().all(|p| p.1 > 0.0), "{phases:?}");
    assert_eq!(text(&run(&["run", "--", "true"]).stderr), "");
}
