//! Cgroup limits for sandboxes, on cgroup v1 (per-controller hierarchies, as on this project's hosts, even
//! when a cgroup2 mount sits beside them) and on a pure cgroup v2 host. The flavour is detected once.

use crate::{Error, Limits, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;

/// One sandbox's cgroup: a directory per controller hierarchy (v1) or a single directory (v2).
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

/// Which cgroup layout the host has; chosen once by [`Cgroups::detect`].
#[derive(Debug, Clone)]
pub struct Cgroups {
    v2: bool,
    parent: String,
}

const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

impl Cgroups {
    /// Detects the host's cgroup layout. `parent` is the directory (relative to each hierarchy's root) under
    /// which sandbox cgroups are made, e.g. `hangar`.
    ///
    /// A pure v2 host has cgroup2 mounted at `/sys/fs/cgroup`. Anything else is treated as v1 and must have
    /// the memory, cpu and pids controllers mounted under `/sys/fs/cgroup/<controller>`; a hybrid host's
    /// cgroup2 mount (`/sys/fs/cgroup/unified`) is ignored, which is what lets Hangar run where crun refuses.
    pub fn detect(parent: &str) -> Result<Self> {
        let st = nix::sys::statfs::statfs(CGROUP_ROOT).map_err(|e| Error::sys("statfs", CGROUP_ROOT, e))?;
        let v2 = st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC;
        if !v2 {
            for c in V1_CONTROLLERS {
                let p = Path::new(CGROUP_ROOT).join(c);
                if !p.join("cgroup.procs").exists() {
                    return Err(Error::Unsupported(format!(
                        "cgroup v1 controller {c} is not mounted at {}",
                        p.display()
                    )));
                }
            }
        }
        Ok(Self { v2, parent: parent.to_string() })
    }

    /// Whether the host uses the unified (v2) hierarchy.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The cgroup of sandbox `id` (which may or may not exist yet).
    pub fn sandbox(&self, id: &str) -> SandboxCgroup {
        let dirs = if self.v2 {
            vec![Path::new(CGROUP_ROOT).join(&self.parent).join(id)]
        } else {
            V1_CONTROLLERS.iter().map(|c| Path::new(CGROUP_ROOT).join(c).join(&self.parent).join(id)).collect()
        };
        SandboxCgroup { dirs, v2: self.v2 }
    }

    /// Creates sandbox `id`'s cgroup and applies `limits`.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<SandboxCgroup> {
        if self.v2 {
            let parent = Path::new(CGROUP_ROOT).join(&self.parent);
            mkdir(&parent)?;
            // Controllers must be enabled in every ancestor's subtree_control for the leaf to get them.
            write(&Path::new(CGROUP_ROOT).join("cgroup.subtree_control"), "+memory +cpu +pids")?;
            write(&parent.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        }
        let cg = self.sandbox(id);
        for d in &cg.dirs {
            if let Some(parent) = d.parent() {
                mkdir(parent)?;
            }
            mkdir(d)?;
        }
        let made = cg.apply(limits);
        if made.is_err() {
            let _ = cg.remove(Duration::from_secs(1));
        }
        made.map(|_| cg)
    }
}

impl SandboxCgroup {
    /// The `cgroup.procs` files a process writes itself into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The directories of this cgroup (one per v1 hierarchy, one on v2).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn dir_of(&self, controller: &str) -> &Path {
        if self.v2 {
            &self.dirs[0]
        } else {
            let i = V1_CONTROLLERS.iter().position(|c| *c == controller).unwrap_or(0);
            &self.dirs[i]
        }
    }

    fn apply(&self, limits: &Limits) -> Result<()> {
        let (mem, cpu, pids) = (self.dir_of("memory"), self.dir_of("cpu"), self.dir_of("pids"));
        if let Some(bytes) = limits.memory_bytes {
            if self.v2 {
                write(&mem.join("memory.max"), &bytes.to_string())?;
                // Without this, a hog would swap instead of being OOM-killed at its limit.
                let _ = write(&mem.join("memory.swap.max"), "0");
            } else {
                write(&mem.join("memory.limit_in_bytes"), &bytes.to_string())?;
                let _ = write(&mem.join("memory.swappiness"), "0");
            }
        }
        if let Some(cores) = limits.cpus {
            let quota = ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000);
            if self.v2 {
                write(&cpu.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        if let Some(n) = limits.pids {
            write(&pids.join("pids.max"), &n.to_string())?;
        }
        Ok(())
    }

    /// Process ids (in the caller's pid namespace) still in this cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in &self.dirs {
            if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Number of times the kernel's OOM killer fired in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        fs::read_to_string(self.dir_of("memory").join(file))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    }

    /// SIGKILLs every process left in the cgroup, then removes its directories, waiting up to `wait` for the
    /// kernel to let go of them. Missing directories are not an error.
    pub fn remove(&self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if self.v2 {
                let _ = write(&self.dirs[0].join("cgroup.kill"), "1");
            }
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let mut busy = None;
            for d in &self.dirs {
                match fs::remove_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => busy = Some(Error::io("rmdir", d, e)),
                }
            }
            match busy {
                None => return Ok(()),
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are given ("0" means "me").
pub fn join(procs_files: &[PathBuf]) -> Result<()> {
    for f in procs_files {
        write(f, "0")?;
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("mkdir cgroup", p, e)),
    }
}

fn write(p: &Path, v: &str) -> Result<()> {
    fs::write(p, v).map_err(|e| Error::io("write cgroup file", p, e))
}
