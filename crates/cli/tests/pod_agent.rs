//! The agent in Pod mode (`hangar-agent pod`), run as the first process of a pid namespace of its own on this
//! host and reached over TCP on loopback, the way the Kubernetes backend reaches it through a port-forward:
//! the token handshake, execs with their journal sent inline, the main command's log, tree kills without
//! cgroups, the container's environment and working directory, and the end left in the termination message.

mod common;

/// Which backend `common::client()` gives (unused here: these tests speak the agent protocol themselves).
pub const BACKEND: common::Backend = common::Backend::Embedded;

use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::remote::{token_digest, Mux};
use hangar_agent_protocol::{
    EndReason, EndRecord, ExecEnd, ExecSpec, OutputStream, PodConfig, Request, Response, StartReport, Workload,
    POD_CONFIG_ENV,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "pod-agent-test-token";

/// A Pod agent running as PID 1 of a new pid namespace (with its own /proc), in a directory of its own.
struct PodAgent {
    child: Child,
    dir: PathBuf,
    addr: std::net::SocketAddr,
}

/// Tests start agents at once, each on a port found free a moment before (bound to port 0, then let go):
/// held from that probe until the agent listens (or exited), so that no two agents are given one port (one
/// test's client would then greet another test's agent, which may be going away).
static PORT_PROBE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PodAgent {
    fn start(tag: &str, main: &[&str]) -> Self {
        common::require_root();
        let _probing = PORT_PROBE.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!("hangar-pod-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("work")).unwrap();
        // A free port on loopback (the agent binds it again at once).
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let cfg = PodConfig {
            workload: Workload {
                main: main.iter().map(|s| s.to_string()).collect(),
                env: vec![("FROM_WORKLOAD".into(), "w".into())],
                workdir: String::new(),
                lifetime_ms: 120_000,
                stop_grace_ms: 2_000,
                user: String::new(),
                journal_budget: None,
            },
            token_digest: token_digest(TOKEN),
            listen: addr,
            state_dir: dir.join("state"),
            termination_log: dir.join("termination-log"),
        };
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(common::agent_bin())
            .arg("pod")
            .env(POD_CONFIG_ENV, serde_json::to_string(&cfg).unwrap())
            .env("FROM_IMAGE", "i")
            .current_dir(dir.join("work"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut agent = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && agent.child.try_wait().unwrap().is_none()
            && std::net::TcpStream::connect(addr).is_err()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        agent
    }

    async fn dial(&self, token: &str) -> std::io::Result<Mux> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::TcpStream::connect(self.addr).await {
                Ok(s) => return Mux::dial(s, token).await,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn termination_message(&self) -> String {
        std::fs::read_to_string(self.dir.join("termination-log")).unwrap_or_default()
    }

    /// Waits for the agent (and its namespace) to exit.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the pod agent did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PodAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What an inline attachment delivered.
#[derive(Debug, Default)]
struct Delivered {
    out: Vec<u8>,
    err: Vec<u8>,
    gaps: Vec<(OutputStream, u64, u64)>,
    end: Option<ExecEnd>,
}

/// Reads an inline attachment to its end, acknowledging as it goes.
async fn read_inline(conn: &mut Conn) -> Delivered {
    let mut got = Delivered::default();
    loop {
        match conn.recv::<Response>().await.unwrap().expect("the agent ended the attachment early") {
            Response::Output { stream, offset, len } => {
                let buf = if stream == OutputStream::Stdout { &mut got.out } else { &mut got.err };
                assert_eq!(offset, buf.len() as u64, "output arrives in order, without holes");
                conn.recv_raw(len, |c| {
                    buf.extend_from_slice(c);
                    Ok(())
                })
                .await
                .unwrap();
                conn.send(&Request::Ack { pos: [got.out.len() as u64, got.err.len() as u64] }).await.unwrap();
            }
            Response::Gap { stream, from, to } => got.gaps.push((stream, from, to)),
            Response::Ended(end) => {
                got.end = Some(end);
                return got;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn exec_inline(mux: &Mux, argv: &[&str]) -> Delivered {
    let mut conn = mux.open().await.unwrap();
    conn.send(&Request::Inline).await.unwrap();
    conn.send(&Request::Exec(ExecSpec::new(argv.iter().copied()))).await.unwrap();
    let Some(Response::Exec(_)) = conn.recv::<Response>().await.unwrap() else { panic!("no exec info") };
    read_inline(&mut conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_agent_runs_execs_streams_their_journal_inline_and_records_its_end() {
    let mut agent = PodAgent::start("life", &["sh", "-c", "echo main says hi; sleep 600"]);
    let mux = agent.dial(TOKEN).await.expect("the agent accepts its token");

    // The container's environment (the image's and the Pod's) and working directory, then the workload's.
    let env = exec_inline(&mux, &["sh", "-c", "echo $FROM_IMAGE $FROM_WORKLOAD $HANGAR_POD_CONFIG; pwd"]).await;
    let workdir = agent.dir.join("work");
    assert_eq!(String::from_utf8_lossy(&env.out), format!("i w\n{}\n", workdir.display()));

    // Both streams, byte-exact, with the exit code and checksums that add up.
    let r = exec_inline(&mux, &["sh", "-c", "seq 1 300000; echo oops >&2; exit 3"]).await;
    let want = Command::new("seq").args(["1", "300000"]).output().unwrap().stdout;
    assert!(r.out == want, "stdout: {} bytes of {}", r.out.len(), want.len());
    assert_eq!(r.err, b"oops\n");
    let end = r.end.unwrap();
    assert_eq!((end.code, end.bytes), (Some(3), [want.len() as u64, 5]));
    assert_eq!(end.crc32[0], crc(&want));

    // The main command's log, from the start, while it runs.
    let mut conn = mux.open().await.unwrap();
    conn.send(&Request::Inline).await.unwrap();
    conn.send(&Request::Attach { exec: "main".into(), from: [0, 0] }).await.unwrap();
    let Some(Response::Exec(info)) = conn.recv::<Response>().await.unwrap() else { panic!("no log") };
    assert_eq!(info.argv[0], "sh");
    let Some(Response::Output { len, .. }) = conn.recv::<Response>().await.unwrap() else { panic!("no output") };
    let mut line = vec![];
    conn.recv_raw(len, |c| {
        line.extend_from_slice(c);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(line, b"main says hi\n");
    drop(conn);

    // Stopped: the end is the answer, and goes to the termination message; the agent exits.
    let mut conn = mux.open().await.unwrap();
    conn.send(&Request::Stop { grace_ms: 1000 }).await.unwrap();
    let Some(Response::Stopped(answered)) = conn.recv::<Response>().await.unwrap() else { panic!("no end") };
    drop(conn);
    agent.wait();
    let end: EndRecord = serde_json::from_str(&agent.termination_message()).unwrap();
    assert_eq!(end, answered);
    assert_eq!((end.reason, end.signal), (EndReason::Stopped, Some(libc::SIGTERM)));
    // The container's standard output is a copy of the log (and nothing else), whose totals the end states.
    let mut copy = vec![];
    std::io::Read::read_to_end(agent.child.stdout.as_mut().unwrap(), &mut copy).unwrap();
    assert_eq!(copy, b"main says hi\n");
    let log = end.log.expect("the log's end");
    assert_eq!((log.bytes, log.crc32[0]), ([13, 0], crc(b"main says hi\n")));
    assert_eq!(log.ending, hangar_agent_protocol::Ending::Signaled { signal: libc::SIGTERM });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_agent_refuses_a_wrong_token_and_names_a_main_command_that_cannot_start() {
    let agent = PodAgent::start("token", &[]);
    let refused = agent.dial("not-the-token").await.err().expect("a wrong token is refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied, "{refused}");
    let mux = agent.dial(TOKEN).await.unwrap();
    assert_eq!(exec_inline(&mux, &["echo", "still serving"]).await.out, b"still serving\n");

    let mut missing = PodAgent::start("missing", &["no-such-command-xyz"]);
    assert!(!missing.wait().success());
    let Some(StartReport::CommandFailed(f)) = StartReport::parse(&missing.termination_message()) else {
        panic!("termination message: {:?}", missing.termination_message())
    };
    assert_eq!(f.kind, hangar_agent_protocol::StartFailureKind::NotFound);
    assert!(f.message.contains("no-such-command-xyz"), "{}", f.message);
}

/// Without cgroups (as in a Pod) a cancel still reaches every process of the exec's tree, including one that
/// left the exec's process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_agent_kills_an_execs_whole_tree_without_cgroups() {
    let agent = PodAgent::start("tree", &[]);
    let mux = agent.dial(TOKEN).await.unwrap();
    let mut conn = mux.open().await.unwrap();
    conn.send(&Request::Inline).await.unwrap();
    // One sleeper in the exec's group, one in a session of its own.
    let tree = "sleep 1001 & setsid sleep 1002 & echo started; wait";
    conn.send(&Request::Exec(ExecSpec::new(["sh", "-c", tree]))).await.unwrap();
    let Some(Response::Exec(_)) = conn.recv::<Response>().await.unwrap() else { panic!("no exec info") };
    let Some(Response::Output { len, .. }) = conn.recv::<Response>().await.unwrap() else { panic!("no output") };
    conn.recv_raw(len, |_| Ok(())).await.unwrap();
    // The sleepers' own command lines (the shell's says "sleep 100x", with a space).
    let sleepers = || common::host_processes_mentioning("sleep\u{0}100").len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleepers() < 2 {
        assert!(Instant::now() < deadline, "the sleepers did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn.send(&Request::Signal { exec: String::new(), signal: libc::SIGKILL }).await.unwrap();
    let end = read_inline(&mut conn).await.end.unwrap();
    assert_eq!(end.ending, hangar_agent_protocol::Ending::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleepers() > 0 {
        assert!(Instant::now() < deadline, "{} sleepers outlived the cancel", sleepers());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}
