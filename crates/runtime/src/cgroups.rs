//! Cgroup limits for sandboxes, on cgroup v1 (per-controller hierarchies, as on this project's hosts, even
//! when a cgroup2 mount sits beside them) and on a pure cgroup v2 host. The flavour is detected once.

use crate::{Error, Limits, Result};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CPU_PERIOD_US: u64 = 100_000;

/// One sandbox's cgroup: a directory per controller hierarchy (v1) or a single directory (v2).
///
/// The workload (the main command and every exec) lives where the memory limit applies, and the agent outside
/// it, so that an out-of-memory kill always hits the workload and never the agent that journals its output
/// and reports how it ended. On v2, which allows no processes in a cgroup that delegates controllers, the
/// workload is a `workload` child (with the pids limit too) and the agent an `agent` child. On v1 the
/// sandbox's memory directory is the workload's and the agent stays in the memory parent that all sandboxes'
/// agents share (`memory/hangar`), while in the other hierarchies it sits in the sandbox's own directory; a
/// sandbox without a memory limit has no memory directory at all: its execs' memory cgroups (peak memory, kills)
/// sit in the shared parent, named after the sandbox (`memory/hangar/<id>.exec-ex-1`).
///
/// Why so few memory cgroups on v1: every memory cgroup costs kernel memory in proportion to the number of
/// memory-aware shrinkers on the host (every mounted filesystem has one, and a sandbox mounts about ten), 1 KiB
/// per 64 of them: with 1,000 sandboxes that is ~170 KiB per memory cgroup, the largest part of an idle
/// sandbox's cost (`hangar bench --density 1000` here: 707–839 KiB of slab per idle sandbox with two memory
/// cgroups each, 276–311 with none). CPU, pids and the device allow-list apply to the whole sandbox, agent
/// included.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    /// Whether the sandbox has a memory cgroup of its own (v2, or a memory limit on v1).
    own_memory: bool,
}

/// The file a process writes `0` to, to move itself into a cgroup ([`join`], and exec processes on their way
/// to their command). On v1 `tasks`, which moves only the writing thread (the whole process, when it has one
/// thread, as every process that joins here has): that skips the lock a move of a whole process takes
/// (`cgroup_threadgroup_rwsem`), whose first taking after a quiet spell waits for an RCU grace period. Measured
/// here, a process moving itself after 300 ms of quiet: 5–35 ms through `cgroup.procs`, 20–50 µs through
/// `tasks`. On v2 `cgroup.procs` (its `cgroup.threads` moves threads only within a threaded subtree).
fn join_file(v2: bool) -> &'static str {
    if v2 {
        "cgroup.procs"
    } else {
        "tasks"
    }
}

/// The child of a sandbox's cgroup that holds its workload.
const WORKLOAD: &str = "workload";
/// The child that holds the agent on v2.
const AGENT_V2: &str = "agent";

/// Which cgroup layout the host has; chosen once by [`Cgroups::detect`].
#[derive(Debug, Clone)]
pub struct Cgroups {
    v2: bool,
    parent: String,
}

/// The v1 hierarchy whose sandbox directory holds only the workload (the agent stays in its parent), so that
/// the OOM killer never picks the agent. (The pids limit stays on the whole sandbox on v1: execs would need a
/// pids cgroup each to be held in a child, one more migration per exec.)
const V1_WORKLOAD_ONLY: &str = "memory";

/// v1 hierarchies a sandbox joins. `cpuacct` gives per-exec CPU time; where it is co-mounted with `cpu`
/// both names lead to the same directory, which is harmless. `devices` holds the device allow-list.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "devices"];

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

    /// Whether a process moving itself into a cgroup is cheap here: always on v1 (see [`join`]); on v2 only
    /// with the cgroup2 mount's `favordynmods` ([`migrations_are_cheap`]).
    pub fn joins_are_cheap(&self) -> bool {
        !self.v2 || migrations_are_cheap() == Some(true)
    }

    /// The cgroup of sandbox `id` (which may or may not exist yet).
    pub fn sandbox(&self, id: &str) -> SandboxCgroup {
        let dirs = if self.v2 {
            vec![Path::new(CGROUP_ROOT).join(&self.parent).join(id)]
        } else {
            V1_CONTROLLERS.iter().map(|c| Path::new(CGROUP_ROOT).join(c).join(&self.parent).join(id)).collect()
        };
        SandboxCgroup { dirs, v2: self.v2, own_memory: true }
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
        let mut cg = self.sandbox(id);
        cg.own_memory = self.v2 || limits.memory_bytes.is_some();
        for (i, d) in cg.dirs.iter().enumerate() {
            if let Some(parent) = d.parent() {
                mkdir(parent)?;
            }
            if cg.own_memory || V1_CONTROLLERS[i] != V1_WORKLOAD_ONLY {
                mkdir(d)?;
            }
        }
        if self.v2 {
            write(&cg.dirs[0].join("cgroup.subtree_control"), "+memory +pids")?;
            mkdir(&cg.dirs[0].join(AGENT_V2))?;
            mkdir(&cg.dirs[0].join(WORKLOAD))?;
        }
        let made = cg.apply(limits);
        if made.is_err() {
            let _ = cg.remove(Duration::from_secs(1));
        }
        made.map(|_| cg)
    }
}

impl SandboxCgroup {
    /// The files the sandbox's agent writes itself into ([`join`]).
    pub fn agent_join_files(&self) -> Vec<PathBuf> {
        if self.v2 {
            return vec![self.dirs[0].join(AGENT_V2).join(join_file(true))];
        }
        V1_CONTROLLERS
            .iter()
            .zip(&self.dirs)
            .map(|(c, d)| match (*c == V1_WORKLOAD_ONLY, d.parent()) {
                (true, Some(shared)) => shared.join(join_file(false)),
                _ => d.join(join_file(false)),
            })
            .collect()
    }

    /// The directories the workload's processes get their cgroups under (one per exec, see
    /// [`CgroupDirs::create_exec`]): `workload` on v2, the sandbox's own directories on v1 (but the shared
    /// memory parent when the sandbox has no memory directory).
    pub fn exec_parents(&self) -> Vec<PathBuf> {
        if self.v2 {
            return vec![self.dirs[0].join(WORKLOAD)];
        }
        V1_CONTROLLERS
            .iter()
            .zip(&self.dirs)
            .map(|(c, d)| match (*c == V1_WORKLOAD_ONLY && !self.own_memory, d.parent()) {
                (true, Some(shared)) => shared.to_path_buf(),
                _ => d.clone(),
            })
            .collect()
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
        let cpu = self.dir_of("cpu");
        let (mem, pids) = match self.v2 {
            true => (self.dirs[0].join(WORKLOAD), self.dirs[0].join(WORKLOAD)),
            false => (self.dir_of("memory").to_path_buf(), self.dir_of("pids").to_path_buf()),
        };
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
        // The device allow-list: the `devices` controller on v1, a BPF program on v2.
        if self.v2 {
            let dir = self.dirs[0].as_path();
            let fd = fs::File::open(dir).map_err(|e| Error::io("open cgroup", dir, e))?;
            crate::devices::attach_v2_filter(std::os::fd::AsFd::as_fd(&fd), &dir.display().to_string())?;
        } else {
            let devices = self.dir_of("devices");
            write(&devices.join("devices.deny"), "a")?;
            for d in crate::devices::ALLOWED_DEVICES {
                write(&devices.join("devices.allow"), &d.v1_rule())?;
            }
        }
        Ok(())
    }

    /// SIGKILLs every process left in the cgroup, then removes its directories, waiting up to `wait` for the
    /// kernel to let go of them. Missing directories are not an error.
    pub fn remove(&self, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if self.v2 {
                let _ = write(&self.dirs[0].join("cgroup.kill"), "1");
            }
            for d in &self.dirs {
                kill_procs(d);
            }
            let mut busy = None;
            for d in self.dirs.iter().chain(&self.shared_exec_dirs()) {
                // The workload's and the agent's (v2) and per-exec cgroups an agent left behind (it was
                // killed mid-exec) go first, deepest first.
                if let Err(e) = remove_tree(d) {
                    busy = Some(e);
                }
            }
            match busy {
                None => return Ok(()),
                Some(e) if Instant::now() >= deadline => return Err(e),
                Some(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Exec cgroups of this sandbox in the shared memory parent (v1, no memory limit) that are still there.
    fn shared_exec_dirs(&self) -> Vec<PathBuf> {
        let memory = V1_CONTROLLERS.iter().position(|c| *c == V1_WORKLOAD_ONLY).and_then(|i| self.dirs.get(i));
        let Some((id, shared)) = memory.filter(|_| !self.v2).and_then(|d| Some((d.file_name()?, d.parent()?))) else {
            return vec![];
        };
        let prefix = shared_prefix(&id.to_string_lossy());
        fs::read_dir(shared)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }
}

/// Where the host's cgroup2 hierarchy is mounted, with its mount options and its super-block options (from
/// `/proc/self/mountinfo`).
fn cgroup2_mount() -> Option<(PathBuf, String, String)> {
    cgroup2_mount_in(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<(PathBuf, String, String)> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let mut rest = rest.split(' ');
        if rest.next()? != "cgroup2" {
            return None;
        }
        let super_opts = rest.nth(1)?.to_string();
        let mut fields = fields.split(' ').skip(4);
        let (point, mount_opts) = (fields.next()?, fields.next()?.to_string());
        Some((PathBuf::from(point), mount_opts, super_opts))
    })
}

/// Whether moving a process into a cgroup is cheap on this host: the cgroup2 hierarchy's `favordynmods`
/// option. Without it a migration waits for an RCU grace period (5–15 ms measured on this project's hosts)
/// unless another migration happened a few milliseconds before, and every sandbox start moves its agent,
/// every exec its helper. The option trades that for slightly dearer forks and exits; the lock it changes is
/// shared by all hierarchies, v1 ones too, so on a hybrid host the `unified` mount's option is the one.
/// `None`: the host has no cgroup2 mount.
pub fn migrations_are_cheap() -> Option<bool> {
    cgroup2_mount().map(|(_, _, opts)| opts.split(',').any(|o| o == "favordynmods"))
}

/// Sets `favordynmods` on the host's cgroup2 mount, keeping its other options (see [`migrations_are_cheap`]).
/// It holds until the host reboots: the kernel has no option to take it back.
pub fn make_migrations_cheap() -> Result<()> {
    use nix::mount::MsFlags;
    let (point, mount_opts, opts) =
        cgroup2_mount().ok_or_else(|| Error::Unsupported("favordynmods: no cgroup2 hierarchy is mounted".into()))?;
    if opts.split(',').any(|o| o == "favordynmods") {
        return Ok(());
    }
    // A remount sets the mount's flags too: the ones it has are given again.
    let mut flags = MsFlags::MS_REMOUNT;
    for o in mount_opts.split(',') {
        flags |= match o {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            _ => MsFlags::empty(),
        };
    }
    let data: Vec<&str> = opts.split(',').filter(|o| !matches!(*o, "rw" | "ro")).chain(["favordynmods"]).collect();
    nix::mount::mount(None::<&str>, &point, None::<&str>, flags, Some(data.join(",").as_str()))
        .map_err(|e| Error::sys("remount with favordynmods", point.display(), e))
}

/// Moves the calling process into the cgroups whose join files ([`SandboxCgroup::agent_join_files`]) are given
/// ("0" means "me"). It must have one thread: on v1 the file moves only the writing thread (see `join_file`).
pub fn join(files: &[PathBuf]) -> Result<()> {
    let threads = fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads != 1 && files.iter().any(|f| f.ends_with(join_file(false))) {
        return Err(Error::Unsupported(format!("joining cgroups: this process has {threads} threads, not one")));
    }
    for f in files {
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

/// Kills what is left in `dir` and below and removes the directories, children first. A missing directory
/// is not an error.
fn remove_tree(dir: &Path) -> Result<()> {
    kill_procs(dir);
    for child in fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = remove_tree(&child.path());
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("rmdir", dir, e)),
    }
}

fn kill_procs(dir: &Path) {
    for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// What the names of sandbox `id`'s exec cgroups start with in a directory it shares with other sandboxes (the
/// v1 memory parent of sandboxes without a memory limit), so they are told apart and removed with it.
fn shared_prefix(id: &str) -> String {
    format!("{id}.")
}

/// v1 hierarchies an exec gets a cgroup in: peak memory and OOM kills, CPU time.
const EXEC_CONTROLLERS: [&str; 2] = ["memory", "cpuacct"];

/// The sandbox's own cgroup directories, opened by its agent before it leaves the host's mount namespace, so
/// that it can give every exec a cgroup of its own (exact tree kills, CPU time, peak memory, OOM kills).
#[derive(Debug)]
pub struct CgroupDirs {
    v2: bool,
    /// (controller, directory, what exec cgroups' names start with there); the controller is empty on v2.
    dirs: Vec<(String, OwnedFd, String)>,
}

/// One exec's cgroup under its sandbox's. Once the exec ended and it is empty, it may serve a later exec
/// ([`ExecCgroup::recycle`]).
#[derive(Debug)]
pub struct ExecCgroup {
    v2: bool,
    /// (parent directory, own directory's name).
    dirs: Vec<(OwnedFd, String)>,
    /// Each directory's `cgroup.procs`, to list what is in it.
    procs: Vec<OwnedFd>,
    /// Each directory's join file (`join_file`), for processes to write themselves into.
    joins: Vec<OwnedFd>,
    /// (controller, file, descriptor) of the files read at every exec's end ([`measured_files`]), opened once
    /// with the cgroup, which serves many execs ([`ExecCgroup::recycle`]).
    files: Vec<(String, &'static str, OwnedFd)>,
    /// The counters when it was last recycled ([`ExecCgroup::final_usage`] is measured from there); for peak memory,
    /// what was left charged to it then.
    base: CgroupUsage,
    /// The counters an exec's end measured in the cgroup, empty then ([`ExecCgroup::final_usage`]): final, so
    /// [`ExecCgroup::recycle`] starts from them without reading the cgroup again.
    settled: Option<CgroupUsage>,
}

/// What an exec's cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time in user mode, nanoseconds.
    pub cpu_user_ns: u64,
    /// CPU time in kernel mode, nanoseconds.
    pub cpu_sys_ns: u64,
    /// Peak memory (including page cache), bytes.
    pub peak_memory_bytes: u64,
    /// Processes the kernel's OOM killer killed in this cgroup.
    pub oom_kills: u64,
}

fn open_dir_at(dir: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{open, openat, OFlag};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match dir {
        Some(d) => openat(d, path, flags, nix::sys::stat::Mode::empty()),
        None => open(path, flags, nix::sys::stat::Mode::empty()),
    }
    .map_err(std::io::Error::from)
}

/// Reads an open cgroup file afresh: `pread` from offset 0 until end of file (a cgroup file read from 0 is
/// generated anew; no `statx` and `lseek` for a size hint, which a cgroup file's size of 4096 or 0 would not
/// give anyway). A first read that leaves room in its 512 bytes read everything: the kernel generates a cgroup
/// file's records into a buffer of a page or more and stops short of the reader's room only at the end or
/// when that buffer is full, so the one `pread` is all the short files that every exec's end reads take.
fn read_open(fd: &OwnedFd) -> String {
    let mut buf = vec![0u8; 512];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match nix::sys::uio::pread(fd, &mut buf[len..], len as i64) {
            Ok(0) => break,
            Ok(n) if len == 0 && n < buf.len() => {
                len = n;
                break;
            }
            Ok(n) => len += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return String::new(),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).unwrap_or_default()
}

/// A v1 memory cgroup's peak usage, which a write resets.
const V1_PEAK: &str = "memory.max_usage_in_bytes";

/// The files of an exec cgroup's directory (of `controller`, on v1) that every exec's end reads.
fn measured_files(v2: bool, controller: &str) -> &'static [&'static str] {
    match (v2, controller) {
        (true, _) => &["cpu.stat", "memory.peak", "memory.events"],
        (false, "cpuacct") => &["cpuacct.usage_user", "cpuacct.usage_sys"],
        (false, "memory") => &[V1_PEAK, "memory.oom_control", "memory.usage_in_bytes"],
        _ => &[],
    }
}

fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// OOM kills so far in the cgroup this process is in, as its container shows it (`/sys/fs/cgroup` mounted as
/// the container's own cgroup: v1 `memory/memory.oom_control`, v2 `memory.events`); 0 when neither is there.
pub fn own_oom_kills() -> u64 {
    let read = |p: &str| fs::read_to_string(p).ok();
    read("/sys/fs/cgroup/memory/memory.oom_control")
        .or_else(|| read("/sys/fs/cgroup/memory.events"))
        .map_or(0, |t| keyed(&t, "oom_kill"))
}

impl CgroupDirs {
    /// Opens the directories execs get their cgroups under ([`SandboxCgroup::exec_parents`]) for sandbox `id`.
    /// Directories that cannot be opened are skipped: per-exec accounting is then partial, never fatal. In a
    /// directory that is not the sandbox's own (no component of its path is `id`: the shared memory parent),
    /// exec cgroups are named `<id>.<name>`.
    pub fn open(parents: &[PathBuf], id: &str) -> Self {
        let mut dirs = Vec::new();
        let mut v2 = false;
        for dir in parents {
            let Ok(fd) = open_dir_at(None, dir) else { continue };
            v2 = nix::sys::statfs::fstatfs(&fd)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
            let controller = dir
                .strip_prefix(CGROUP_ROOT)
                .ok()
                .and_then(|rel| rel.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .filter(|_| !v2)
                .unwrap_or_default();
            let own = dir.components().any(|c| c.as_os_str() == id);
            dirs.push((controller, fd, if own { String::new() } else { shared_prefix(id) }));
        }
        Self { v2, dirs }
    }

    /// Whether there are no directories (a Pod's agent, whose cgroups are the kubelet's): exec cgroups then
    /// hold nothing.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Makes cgroup `name` under each of the sandbox's directories. On v2 no controller is delegated to it
    /// (the sandbox's own processes sit in the sandbox cgroup), so it gives kills and CPU time (`cpu.stat`
    /// is always there) but no peak memory.
    pub fn create_exec(&self, name: &str) -> std::io::Result<ExecCgroup> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;
        let (mut dirs, mut procs, mut joins, mut files) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let open = |dir: &OwnedFd, file: &str, flags: OFlag| openat(dir, file, flags | OFlag::O_CLOEXEC, Mode::empty());
        // On v1 only the hierarchies that measure (and hold the tree for kills) get one: fewer mkdirs per exec.
        let measuring = self.dirs.iter().filter(|(c, _, _)| self.v2 || EXEC_CONTROLLERS.contains(&c.as_str()));
        for (controller, parent, prefix) in measuring {
            let name = format!("{prefix}{name}");
            match nix::sys::stat::mkdirat(parent, name.as_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let own = open_dir_at(Some(parent), Path::new(&name))?;
            procs.push(open(&own, "cgroup.procs", OFlag::O_RDONLY)?);
            joins.push(open(&own, join_file(self.v2), OFlag::O_WRONLY)?);
            for &file in measured_files(self.v2, controller) {
                // The v1 peak is reset by a write (`recycle`); a file that is not there (v2's memory files
                // without the memory controller) is simply not measured.
                let mode = if file == V1_PEAK { OFlag::O_RDWR } else { OFlag::O_RDONLY };
                if let Ok(fd) = open(&own, file, mode) {
                    files.push((controller.clone(), file, fd));
                }
            }
            dirs.push((parent.try_clone()?, name));
        }
        Ok(ExecCgroup { v2: self.v2, dirs, procs, joins, files, base: CgroupUsage::default(), settled: None })
    }
}

impl ExecCgroup {
    /// Raw descriptors of the join files (`tasks` on v1, see `join_file`); a child writes `0` to each (between
    /// fork and exec, while it has one thread) to join before it can start anything else.
    pub fn join_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.joins.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Process ids (in the caller's pid namespace) in this cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .procs
            .iter()
            .flat_map(|fd| read_open(fd).lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<_>>())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether this cgroup holds the exec's processes (it has a directory in some hierarchy).
    pub fn holds_processes(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// SIGKILLs every process in the cgroup, including any that left the exec's process group or session.
    pub fn kill_all(&self) -> usize {
        let pids = self.pids();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        pids.len()
    }

    /// Measured file `file` of the directory of `controller` (any, on v2), if it is there.
    fn file(&self, controller: &str, file: &str) -> Option<&OwnedFd> {
        self.files.iter().find(|(c, f, _)| (self.v2 || c == controller) && *f == file).map(|(_, _, fd)| fd)
    }

    /// The contents of measured file `file` of `controller`'s directory; empty when it is not there.
    fn read(&self, controller: &str, file: &str) -> String {
        self.file(controller, file).map(read_open).unwrap_or_default()
    }

    /// What an exec used, at its end: CPU time, peak memory and OOM kills since the cgroup was made or last
    /// [recycled](ExecCgroup::recycle). Peak memory after a recycle counts from what earlier execs left charged
    /// to the cgroup (page cache of files they wrote, say), which stays charged to it. `empty`: the caller found
    /// the cgroup empty once the exec's process had ended (a [`ExecCgroup::kill_all`] that killed none), so
    /// nothing can enter it again and these counters are final: [`ExecCgroup::recycle`] then takes them as its
    /// base rather than reading the cgroup again (eight reads fewer per exec, right after its end went out).
    pub fn final_usage(&mut self, empty: bool) -> CgroupUsage {
        let (now, base) = (self.counters(), self.base);
        self.settled = empty.then_some(now);
        CgroupUsage {
            cpu_user_ns: now.cpu_user_ns.saturating_sub(base.cpu_user_ns),
            cpu_sys_ns: now.cpu_sys_ns.saturating_sub(base.cpu_sys_ns),
            peak_memory_bytes: now.peak_memory_bytes.saturating_sub(base.peak_memory_bytes),
            oom_kills: now.oom_kills.saturating_sub(base.oom_kills),
        }
    }

    /// Readies the cgroup for another exec, if no process is in it: its counters start again from here, its
    /// peak memory is reset to what is charged to it now. `false` (and unchanged) when it cannot be: the
    /// caller then removes it.
    pub fn recycle(&mut self) -> bool {
        let mut base = match self.settled.take() {
            Some(counters) => counters,
            None if !self.pids().is_empty() => return false,
            None => self.counters(),
        };
        if self.v2 && base.peak_memory_bytes > 0 {
            // v2's `memory.peak` cannot be reset (before Linux 6.12): one that measured memory is not reused.
            return false;
        }
        base.peak_memory_bytes = 0;
        if let Some(peak) = self.file("memory", V1_PEAK).filter(|_| !self.v2) {
            // Writing 0 sets the peak to the usage now; that usage is the new zero.
            if nix::sys::uio::pwrite(peak, b"0", 0).is_err() {
                return false;
            }
            base.peak_memory_bytes = self.read("memory", "memory.usage_in_bytes").trim().parse().unwrap_or(0);
        }
        self.base = base;
        true
    }

    /// The kernel's counters as they stand (cumulative since the cgroup was made; the peak since its reset).
    fn counters(&self) -> CgroupUsage {
        let mut u = CgroupUsage::default();
        let number = |controller: &str, file: &str| self.read(controller, file).trim().parse().unwrap_or(0);
        if self.v2 {
            let stat = self.read("", "cpu.stat");
            u.cpu_user_ns = keyed(&stat, "user_usec") * 1000;
            u.cpu_sys_ns = keyed(&stat, "system_usec") * 1000;
            u.peak_memory_bytes = number("", "memory.peak");
            u.oom_kills = keyed(&self.read("", "memory.events"), "oom_kill");
            return u;
        }
        u.cpu_user_ns = number("cpuacct", "cpuacct.usage_user");
        u.cpu_sys_ns = number("cpuacct", "cpuacct.usage_sys");
        u.peak_memory_bytes = number("memory", V1_PEAK);
        u.oom_kills = keyed(&self.read("memory", "memory.oom_control"), "oom_kill");
        u
    }

    /// Removes the cgroup once its processes are gone (kills stragglers; tries for up to `wait`).
    pub fn remove(self, wait: Duration) {
        let deadline = Instant::now() + wait;
        for (parent, name) in &self.dirs {
            loop {
                self.kill_all();
                match nix::unistd::unlinkat(parent, name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => break,
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                    Err(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Through v1 `tasks` only the writing thread would move: a process with other threads is refused, before
    /// anything is written (the file named here does not even exist).
    #[test]
    fn a_process_with_more_than_one_thread_cannot_join_through_tasks() {
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || parked.recv());
        let joined = super::join(&[std::path::PathBuf::from("/nonexistent/tasks")]);
        drop(stop);
        let _ = other.join();
        let err = joined.unwrap_err().to_string();
        assert!(err.contains("threads, not one"), "{err}");
    }

    #[test]
    fn the_cgroup2_mount_and_its_options_are_read_from_mountinfo() {
        let info = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,relatime - cgroup2 cgroup2 rw,nsdelegate\n";
        let (point, mount, sb) = super::cgroup2_mount_in(info).unwrap();
        assert_eq!(
            (point.to_str().unwrap(), mount.as_str(), sb.as_str()),
            ("/sys/fs/cgroup/unified", "rw,nosuid,relatime", "rw,nsdelegate")
        );
        assert_eq!(super::cgroup2_mount_in("30 25 0:26 / /x rw - cgroup cgroup rw,memory\n"), None);
    }

    /// Sets the option on this host for good (the kernel cannot take it back): harmless for the tests after it.
    #[test]
    fn favordynmods_is_set_on_the_cgroup2_mount_keeping_its_other_options() {
        let (_, flags, opts) = super::cgroup2_mount().expect("this host has no cgroup2 mount to set favordynmods on");
        super::make_migrations_cheap().unwrap();
        let (_, flags_after, opts_after) = super::cgroup2_mount().unwrap();
        assert_eq!(flags_after, flags, "the mount's flags are kept");
        for o in opts.split(',').chain(["favordynmods"]) {
            assert!(opts_after.split(',').any(|a| a == o), "{o} is in {opts_after}");
        }
        assert_eq!(super::migrations_are_cheap(), Some(true));
        super::make_migrations_cheap().expect("once set, setting it again is a no-op");
    }
}
