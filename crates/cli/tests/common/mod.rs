//! Shared helpers for the integration tests: one embedded engine per test binary, in a state directory of
//! its own, using the `hangar-agent` built with these tests.
#![allow(dead_code)]

use hangar::{Client, EngineConfig, Sandbox, SandboxBuilder};
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

pub fn client() -> Client {
    require_root();
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            Client::with_config(EngineConfig { state_dir: state_dir(), agent_bin: agent_bin() })
                .expect("embedded engine opens")
        })
        .clone()
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

/// Everything a sandbox could leave on the host: processes, mounts, cgroups, directories.
pub fn leftovers(id: &str) -> Vec<String> {
    let mut left = vec![];
    for pid in host_processes_mentioning(id) {
        left.push(format!("process {pid}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(mounts.lines().filter(|l| l.contains(id)).map(|l| format!("mount {l}")));
    for ctrl in ["memory", "cpu", "pids"] {
        let p = PathBuf::from("/sys/fs/cgroup").join(ctrl).join("hangar").join(id);
        if p.exists() {
            left.push(format!("cgroup {}", p.display()));
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
