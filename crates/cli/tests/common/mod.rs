//! Shared helpers for the integration tests: one embedded engine per test binary, in a state directory of
//! its own, using the `hangar-agent` built with these tests.
#![allow(dead_code)]

pub mod images;
pub mod proxy;

use hangar::{Client, EngineConfig, Sandbox, SandboxBuilder};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Tests start real sandboxes, which needs root; say so instead of skipping.
pub fn require_root() {
    assert!(nix::unistd::Uid::effective().is_root(), "these tests create real sandboxes and must run as root");
}

pub fn state_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("hangar-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    })
    .clone()
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hangar-agent"))
}

/// Where a test binary's sandboxes run (its `crate::BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The engine in this process.
    Embedded,
    /// A server on loopback (in this process, on its own runtime) over the local backend.
    Server,
    /// A server on loopback over the Kubernetes backend, on the cluster `scripts/test` starts.
    Kubernetes,
}

/// The test binary's client: the embedded engine, or a server on loopback (the server runs in this process,
/// on its own runtime, over the same state directory).
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| match crate::BACKEND {
            Backend::Embedded => {
                require_root();
                Client::with_config(engine_config()).expect("embedded engine opens")
            }
            Backend::Server | Backend::Kubernetes => {
                Client::connect(&server().url, Some(TOKEN_A)).expect("client for the test server")
            }
        })
        .clone()
}

/// The test engine: `HANGAR_INLINE_JOURNALS=1` runs the suite with exec output sent by the agents on their
/// connections (the path of agents in Pods) instead of read from the journal files. Whatever the host's
/// cgroup migrations cost, the suite runs execs through spare helpers and its inline-journal run without
/// them, so both ways of starting execs are tested.
pub fn engine_config() -> EngineConfig {
    let mut cfg = EngineConfig::new(state_dir(), agent_bin());
    cfg.inline_journals = std::env::var("HANGAR_INLINE_JOURNALS").is_ok_and(|v| v == "1");
    cfg.spare_helpers = Some(!cfg.inline_journals);
    cfg
}

/// The test cluster, as `scripts/test` describes it: its kubeconfig and the agent image imported into it.
pub fn kubernetes_config() -> hangar_engine::KubernetesConfig {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the Kubernetes tests need the test cluster that scripts/test starts \
                 (scripts/k8s-cluster start DIR IMAGES..., then HANGAR_TEST_KUBECONFIG=DIR/kubeconfig and \
                 HANGAR_TEST_AGENT_IMAGE=the name scripts/agent-image printed)"
            )
        })
    };
    hangar_engine::KubernetesConfig {
        kubeconfig: Some(var("HANGAR_TEST_KUBECONFIG").into()),
        namespace: "default".into(),
        agent_image: var("HANGAR_TEST_AGENT_IMAGE"),
        default_image: "python:3.11".into(),
        image_pull_policy: Some("Never".into()),
    }
}

/// Tenants of the test server.
pub const TOKEN_A: &str = "token-tenant-a";
pub const TOKEN_B: &str = "token-tenant-b";

pub struct TestServer {
    pub url: String,
    pub http: std::net::SocketAddr,
    /// The same server on a Unix socket: a `unix:` URL.
    pub unix_url: String,
}

/// A real gRPC server on 127.0.0.1 (an ephemeral port) and on a Unix socket in the state directory, started
/// once per test binary.
pub fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let engine = match crate::BACKEND {
                    Backend::Kubernetes => {
                        hangar_engine::Engine::kubernetes(engine_config(), kubernetes_config()).await.expect("engine")
                    }
                    _ => {
                        require_root();
                        hangar_engine::Engine::open(engine_config()).expect("engine")
                    }
                };
                let tokens = hangar_server::Tokens::parse(&format!("a={TOKEN_A},b={TOKEN_B}")).unwrap();
                let loopback = "127.0.0.1:0".parse().unwrap();
                let socket = state_dir().join("hangar.sock");
                let listen =
                    hangar_server::Listen { grpc: loopback, socket: Some(socket.clone()), http: Some(loopback) };
                let drain = std::time::Duration::from_secs(5);
                let (grpc, http, serve) = hangar_server::bind(engine, tokens, listen, drain, std::future::pending())
                    .await
                    .expect("server binds");
                let unix_url = format!("unix:{}", socket.display());
                tx.send(TestServer { url: format!("http://{grpc}"), http: http.unwrap(), unix_url }).unwrap();
                serve.await.expect("server runs");
            });
        });
        rx.recv().expect("server started")
    })
}

/// A builder bound to the test client: `sleep infinity` in the built-in image.
pub fn builder() -> SandboxBuilder {
    Sandbox::builder().client(&client()).command("sleep").args(["infinity"])
}

pub async fn sandbox() -> Sandbox {
    builder().create().await.expect("sandbox starts")
}

/// Host processes whose command line mentions `needle`.
pub fn host_processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// The host pid of a sandbox's agent: the one process naming the sandbox whose parent does not (a child the
/// agent is just forking still shows the agent's command line for a moment).
/// Peak memory (KiB) of a process from its /proc status (VmHWM), 0 when it is gone.
pub fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// A sparse file of `size` bytes ending in `END!`, for transfers whose content can be checked cheaply.
pub fn sparse_file_with_marker(path: &std::path::Path, size: u64) {
    use std::io::{Seek, Write};
    let mut f = std::fs::File::create(path).unwrap();
    f.seek(std::io::SeekFrom::Start(size - 4)).unwrap();
    f.write_all(b"END!").unwrap();
}

/// Whether `path` is `size` bytes long and ends in `END!`.
pub fn has_marker(path: &std::path::Path, size: u64) -> bool {
    use std::io::{Read, Seek};
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut tail = String::new();
    f.metadata().is_ok_and(|m| m.len() == size)
        && f.seek(std::io::SeekFrom::Start(size - 4)).is_ok()
        && f.read_to_string(&mut tail).is_ok()
        && tail == "END!"
}

/// The parent of a host process (0 when it is gone).
pub fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

pub fn agent_pid(id: &str) -> i32 {
    let named = host_processes_mentioning(id);
    let agents: Vec<i32> = named.iter().copied().filter(|&p| !named.contains(&parent_of(p))).collect();
    assert_eq!(agents.len(), 1, "exactly one agent names sandbox {id}: {agents:?} of {named:?}");
    agents[0]
}

/// Whether this binary's sandboxes keep spare exec helpers: as [`engine_config`] says, except in Pods.
pub fn spares_expected() -> bool {
    crate::BACKEND != Backend::Kubernetes && engine_config().spare_helpers.expect("the test engine says")
}

/// Whether a spare exec helper of the agent `agent` is waiting, polling for up to 2 s.
pub async fn spare_helper_waits(agent: i32) -> bool {
    // Ready once it sits in its exec cgroup (then the agent takes it on within moments): a new one (`exec-s…`)
    // or an ended exec's, reused (`exec-ex-…`).
    let ready = |p: i32| std::fs::read_to_string(format!("/proc/{p}/cgroup")).is_ok_and(|c| c.contains("/exec-"));
    for _ in 0..100 {
        if host_processes_mentioning("--exec-helper").into_iter().any(|p| parent_of(p) == agent && ready(p)) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// Everything a sandbox could leave on the host: processes, mounts, cgroups, directories.
pub fn leftovers(id: &str) -> Vec<String> {
    let mut left = vec![];
    for pid in host_processes_mentioning(id) {
        left.push(format!("process {pid}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(mounts.lines().filter(|l| l.contains(id)).map(|l| format!("mount {l}")));
    for ctrl in ["memory", "cpu", "cpuacct", "pids", "devices"] {
        let p = PathBuf::from("/sys/fs/cgroup").join(ctrl).join("hangar").join(id);
        if p.exists() {
            left.push(format!("cgroup {}", p.display()));
        }
    }
    // Exec cgroups of a sandbox without a memory limit, in the shared memory parent.
    for e in std::fs::read_dir("/sys/fs/cgroup/memory/hangar").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&format!("{id}.")) {
            left.push(format!("cgroup {}", e.path().display()));
        }
    }
    let unified = PathBuf::from("/sys/fs/cgroup/hangar").join(id);
    if unified.exists() {
        left.push(format!("cgroup {}", unified.display()));
    }
    let dir = state_dir().join("sandboxes").join(id);
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}

/// The names of sandbox `id`'s exec cgroups on the host now (the main command's not counted), in any
/// hierarchy: v1's memory (the sandbox's own directory or, as `<id>.exec-…`, the shared one) and cpuacct,
/// v2's `workload`.
pub fn exec_cgroups(id: &str) -> std::collections::BTreeSet<String> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let shared = format!("{id}.");
    let places = [
        (root.join("memory/hangar").join(id), ""),
        (root.join("memory/hangar"), shared.as_str()),
        (root.join("cpuacct/hangar").join(id), ""),
        (root.join("hangar").join(id).join("workload"), ""),
    ];
    let mut names = std::collections::BTreeSet::new();
    for (dir, prefix) in places {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_prefix(prefix) {
                Some(own) if own.starts_with("exec-") && e.path().is_dir() => names.insert(own.to_string()),
                _ => false,
            };
        }
    }
    names
}

/// A `hangar serve` process on an ephemeral loopback port, over this binary's state directory.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
}

impl ServeProcess {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// A server on `listen` (an address a previous server used, to restart "the same" server).
    pub fn start_on(listen: &str) -> Self {
        Self::start_with(listen, &[])
    }

    /// As [`ServeProcess::start_on`], with more arguments (`--socket PATH`).
    pub fn start_with(listen: &str, more: &[&str]) -> Self {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"));
        c.args(["serve", "--listen", listen, "--drain", "1"])
            .args(more)
            .env("HANGAR_STATE_DIR", state_dir())
            .env("HANGAR_AGENT_BIN", agent_bin())
            .env("HANGAR_SERVER_TOKENS", format!("a={TOKEN_A}"));
        Self::spawn(c)
    }

    /// A server over the Kubernetes backend (the test cluster, see [`kubernetes_config`]) on an ephemeral
    /// loopback port: one of several replicas serving the same sandboxes.
    pub fn kubernetes() -> Self {
        let k = kubernetes_config();
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"));
        c.args(["serve", "--listen", "127.0.0.1:0", "--drain", "1", "--backend", "kubernetes"])
            .arg("--kubeconfig")
            .arg(k.kubeconfig.unwrap())
            .args(["--namespace", &k.namespace, "--agent-image", &k.agent_image, "--default-image", &k.default_image])
            .args(["--image-pull-policy", "Never"])
            .env("HANGAR_STATE_DIR", state_dir())
            .env("HANGAR_AGENT_BIN", agent_bin())
            .env("HANGAR_SERVER_TOKENS", format!("a={TOKEN_A}"));
        Self::spawn(c)
    }

    /// Starts `serve` (a `hangar serve` command line, made by the caller) and waits until it says where it
    /// listens.
    pub fn spawn(mut serve: std::process::Command) -> Self {
        let mut child = serve.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // Read on a thread of its own, so that a server that neither listens nor exits fails the test in a
        // minute instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = vec![];
            for l in lines.map_while(|l| l.ok()) {
                match l.strip_prefix("hangar: listening on ") {
                    Some(addr) => {
                        let _ = tx.send(Ok(addr.to_string()));
                    }
                    None if said.len() < 50 => said.push(l),
                    None => {}
                }
            }
            let _ = tx.send(Err(said.join("\n")));
        });
        let addr = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(said)) => panic!("the server ended without listening; it said:\n{said}"),
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not listen within 60 s")
            }
        };
        Self { child, url: format!("http://{addr}") }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn cli(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"));
        c.env("HANGAR_URL", &self.url).env("HANGAR_TOKEN", TOKEN_A).env_remove("HANGAR_STATE_DIR");
        c
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
