//! Sandbox lifecycle: create, observe, stop, remove, and the file operations.

use crate::store::{Record, Store};
use crate::{
    new_id, now_ms, EngineConfig, Error, FileErrorKind, Result, SandboxConfig, SandboxEnding, SandboxInfo, SandboxState,
};
use hangar_agent_protocol as protocol;
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{AgentConfig, EndReason, EndRecord, ErrorKind, Request, Response, END_RECORD_FILE};
use hangar_images::ImageStore;
use hangar_runtime::cgroups::Cgroups;
use hangar_runtime::{AgentFds, Limits, MountSpec, OverlaySpec, RootfsSpec, SandboxSpec};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long a new sandbox may take to report that it is built.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A sandbox still `pulling` after this long, with nobody finishing it, is considered abandoned.
const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// The engine: one per state directory per process; cheap to share behind an `Arc`.
pub struct Engine {
    cfg: EngineConfig,
    store: Store,
    images: ImageStore,
    cgroups: Cgroups,
    /// The volume that holds sandbox directories, when disk budgets are on.
    volume: Option<hangar_runtime::disk::DiskVolume>,
    /// Serialises recording ends within this process, so whoever returns from a stop finds the cleanup done.
    finishing: tokio::sync::Mutex<()>,
}

impl Engine {
    /// Opens (creating if needed) the state directory and store, and detects the host's cgroup layout.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::InvalidArgument(
                "the embedded engine needs root (rootless sandboxes are not implemented yet)".into(),
            ));
        }
        for d in [cfg.state_dir.clone(), cfg.state_dir.join("sandboxes")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create state directory", d.display(), e))?;
        }
        // Closed to every other host user: sandboxes' writable layers and image layers hold files that a
        // sandbox (or an image's author) made setuid, and journals hold other tenants' output.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod 0700", cfg.state_dir.display(), e))?;
        let store = Store::open(&cfg.state_dir.join("hangar.db"))?;
        let registries = hangar_images::RegistryConfig::load(Some(&cfg.state_dir.join("registries.json")));
        let images = ImageStore::new(cfg.state_dir.join("images")).with_registries(registries);
        let cgroups = Cgroups::detect("hangar")?;
        let volume = match cfg.disk_budget_bytes {
            Some(_) => {
                // Sparse: as large as the host filesystem, so only the budgets (and the host disk) limit it.
                let st = nix::sys::statvfs::statvfs(&cfg.state_dir)
                    .map_err(|e| Error::io("statvfs", cfg.state_dir.display(), e.into()))?;
                let size = st.blocks() as u64 * st.fragment_size() as u64;
                let (dir, image) = (cfg.state_dir.join("sandboxes"), cfg.state_dir.join("sandboxes.img"));
                Some(hangar_runtime::disk::DiskVolume::ensure(&dir, &image, size)?)
            }
            None => None,
        };
        Ok(Arc::new(Self { cfg, store, images, cgroups, volume, finishing: tokio::sync::Mutex::new(()) }))
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Removes image layers and blobs that no image references and no live sandbox uses; returns the
    /// number of layers and blobs removed.
    pub async fn prune_images(self: &Arc<Self>) -> Result<(usize, usize)> {
        let engine = self.clone();
        // The lower layers of every sandbox not known to be over are in use, read once the store is held
        // alone: a sandbox being created holds the store until its agent.json names its layers.
        let in_use = move || {
            let mut in_use = std::collections::HashSet::new();
            for rec in engine.store.list()? {
                let path = engine.sandbox_dir(&rec.info.id).join("agent.json");
                let cfg = std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<AgentConfig>(&b).ok());
                if let (false, Some(cfg)) = (rec.info.state.is_final(), cfg) {
                    in_use.extend(cfg.sandbox.rootfs.root.lower);
                }
            }
            Ok::<_, Error>(in_use)
        };
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || images.prune(in_use))
            .await
            .map_err(|e| Error::Internal(format!("pruning the image store panicked: {e}")))?
    }

    /// The image store sandboxes are made from.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("sandboxes").join(id)
    }

    pub(crate) fn socket_path(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("agent.sock")
    }

    /// Creates a sandbox and waits until its main command is running. A missing image is pulled first,
    /// with the sandbox listed as `pulling` (and its progress) meanwhile.
    pub async fn create(self: &Arc<Self>, mut c: SandboxConfig) -> Result<SandboxInfo> {
        c.validate()?;
        match (c.disk_bytes, self.cfg.disk_budget_bytes) {
            (Some(_), None) => {
                return Err(Error::InvalidArgument(
                    "disk_bytes: this engine has no disk budgets (set HANGAR_DISK_BUDGET)".into(),
                ))
            }
            (Some(d), Some(max)) if d > max || d < 1 << 20 => {
                return Err(Error::InvalidArgument(format!(
                    "disk_bytes: {d} is not between 1 MiB and the engine's budget of {max} bytes"
                )))
            }
            _ => {}
        }
        if let Some(rid) = &c.request_id {
            if let Some(rec) = self.store.by_request(&c.tenant, rid)? {
                return self.await_started(&rec.info.id).await;
            }
        }
        let id = new_id("sb");
        let local = self.images.is_local(&c.image);
        let mut info = SandboxInfo {
            id: id.clone(),
            state: if local { SandboxState::Creating } else { SandboxState::Pulling },
            image: c.image.clone(),
            command: c.command.clone(),
            tags: c.tags.clone(),
            cpus: c.cpus,
            memory_bytes: c.memory_bytes,
            pids: Some(c.pids.unwrap_or(crate::DEFAULT_PIDS_LIMIT)),
            max_lifetime_ms: c.max_lifetime.as_millis() as u64,
            created_at_ms: now_ms(),
            ended_at_ms: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            error: None,
            tenant: c.tenant.clone(),
            progress: None,
        };
        if let Err(e) = self.store.insert(&info, c.request_id.as_deref()) {
            // Lost a race with a concurrent create carrying the same request id: answer with its sandbox.
            if let Some(rec) =
                c.request_id.as_deref().map(|r| self.store.by_request(&c.tenant, r)).transpose()?.flatten()
            {
                return self.await_started(&rec.info.id).await;
            }
            return Err(e);
        }
        // Held until the sandbox's mounts name the image's layers, so a concurrent prune cannot remove them.
        // (Off the async threads: it waits while a prune runs.)
        let images = self.images.clone();
        let hold = match tokio::task::spawn_blocking(move || images.hold()).await {
            Ok(Ok(hold)) => hold,
            Ok(Err(e)) => return Err(self.fail_start(&id, e.into()).await),
            Err(e) => return Err(self.fail_start(&id, Error::InvalidArgument(format!("image hold: {e}"))).await),
        };
        let resolved = self.resolve_image(&id, &c.image).await.and_then(|layout| {
            if c.command.is_empty() {
                c.command = layout.command.clone();
            }
            validate_command(&c).map(|()| layout)
        });
        let layout = match resolved {
            Ok(layout) => layout,
            Err(e) => return Err(self.fail_start(&id, e).await),
        };
        self.store.set_creating(&id, &layout.name, &c.command)?;
        (info.image, info.command, info.state) = (layout.name.clone(), c.command.clone(), SandboxState::Creating);
        let started = self.start(&info, &c, layout).await;
        drop(hold);
        if let Err(e) = started {
            return Err(self.fail_start(&id, e).await);
        }
        self.get(&id).await
    }

    /// Records that sandbox `id` could not start, removes what it left, and hands the error back.
    async fn fail_start(&self, id: &str, e: Error) -> Error {
        let end = SandboxEnding {
            state: SandboxState::Failed,
            code: None,
            signal: None,
            reason: "start_failed",
            error: Some(e.to_string()),
        };
        if let Err(store) = self.store.set_ended(id, &end) {
            tracing::warn!(sandbox = id, "cannot record the failed start: {store}");
        }
        self.cleanup(id).await;
        e
    }

    /// Resolves the image, pulling it if needed and recording the pull's progress on the sandbox.
    async fn resolve_image(self: &Arc<Self>, id: &str, image: &str) -> Result<hangar_images::ImageLayout> {
        let (engine, id, what) = (self.clone(), id.to_string(), format!("resolving image {image}"));
        let image = image.to_string();
        tokio::task::spawn_blocking(move || {
            let mut last = std::time::Instant::now() - Duration::from_secs(1);
            let mut layers: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
            engine.images.resolve_with_progress(&image, |digest, n, total| {
                layers.insert(digest.to_string(), (n, total));
                if last.elapsed() >= Duration::from_millis(200) || n == total {
                    last = std::time::Instant::now();
                    let (done, all) = layers.values().fold((0, 0), |(d, a), (n, t)| (d + n, a + t));
                    let text = format!(
                        "pulled {:.1} of {:.1} MB ({} layers so far)",
                        done as f64 / 1e6,
                        all as f64 / 1e6,
                        layers.len()
                    );
                    let _ = engine.store.set_progress(&id, &text);
                }
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("{what}: the task panicked: {e}")))?
        .map_err(Error::from)
    }

    async fn start(
        self: &Arc<Self>,
        info: &SandboxInfo,
        c: &SandboxConfig,
        layout: hangar_images::ImageLayout,
    ) -> Result<()> {
        let id = &info.id;
        let dir = self.sandbox_dir(id);
        let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io("mkdir", p.display(), e));
        // The writable layers live in `disk/`: with a budget, a subvolume of its own whose quota they count
        // against. (Journals stay outside it, bounded by their own caps, so a workload that fills its disk
        // still gets its output, and its error, to the caller.)
        let disk = dir.join("disk");
        mkdir(&dir)?;
        if let (Some(volume), Some(budget)) = (&self.volume, self.cfg.disk_budget_bytes) {
            volume.create_with_budget(&disk, c.disk_bytes.unwrap_or(budget))?;
        }
        let overlay = |name: &str, lower: Vec<PathBuf>| -> Result<OverlaySpec> {
            let (upper, work) = (disk.join("upper").join(name), disk.join("work").join(name));
            mkdir(&upper)?;
            mkdir(&work)?;
            Ok(OverlaySpec { lower, upper, work })
        };
        let mut mounts = vec![];
        for (target, lower) in &layout.overlays {
            mounts.push(MountSpec::Overlay {
                target: target.clone(),
                overlay: overlay(&target.replace('/', "_"), lower.clone())?,
            });
        }
        mounts
            .extend(layout.tmpfs.iter().map(|(target, size)| MountSpec::Tmpfs { target: target.clone(), size: *size }));
        let rootfs =
            RootfsSpec { root: overlay("root", layout.root_layers.clone())?, mounts, mountpoint: dir.join("rootfs") };
        mkdir(&rootfs.mountpoint)?;
        let limits = Limits { cpus: c.cpus, memory_bytes: c.memory_bytes, pids: info.pids };
        let cgroup = self.cgroups.create(id, &limits)?;
        let mut env = layout.env.clone();
        for (k, v) in &c.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        // Docker's defaults for images whose config leaves them out.
        for (k, v) in [("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("HOME", "/root")] {
            if !env.iter().any(|(ek, _)| ek == k) {
                env.insert(0, (k.into(), v.into()));
            }
        }
        env.push(("HOSTNAME".into(), id.clone()));
        let agent_cfg = AgentConfig {
            sandbox: SandboxSpec {
                id: id.clone(),
                hostname: id.clone(),
                rootfs,
                cgroup_procs: cgroup.agent_procs_files(),
                exec_cgroup_parents: cgroup.exec_parents(),
            },
            main: c.command.clone(),
            env,
            workdir: c.workdir.clone().unwrap_or(layout.workdir),
            lifetime_ms: c.max_lifetime.as_millis() as u64,
            stop_grace_ms: c.stop_grace.as_millis() as u64,
            user: layout.user.clone(),
        };
        let cfg_path = dir.join("agent.json");
        let body = serde_json::to_vec(&agent_cfg)
            .map_err(|e| Error::Internal(format!("sandbox {id}: encoding the agent's configuration: {e}")))?;
        std::fs::write(&cfg_path, body).map_err(|e| Error::io("write", cfg_path.display(), e))?;

        let sock = self.socket_path(id);
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| Error::io("bind agent socket", sock.display(), e))?;
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path).map_err(|e| Error::io("create", log_path.display(), e))?;
        let state_dir = std::fs::File::open(&dir).map_err(|e| Error::io("open", dir.display(), e))?;
        let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("pipe", "agent status", e.into()))?;
        let config = std::fs::File::open(&cfg_path).map_err(|e| Error::io("open", cfg_path.display(), e))?;
        let spawned = hangar_runtime::spawn_agent(
            &self.cfg.agent_bin,
            &[id],
            &[("RUST_BACKTRACE", "1")],
            AgentFds {
                log: log.as_fd(),
                listener: listener.as_fd(),
                status: status_w.as_fd(),
                state_dir: state_dir.as_fd(),
                config: config.as_fd(),
            },
        )?;
        drop((listener, log, state_dir, status_w, config));
        let pid = spawned.pid.as_raw();
        let agent_start = hangar_runtime::process::process_start(pid).map(|(s, _)| s).unwrap_or(0);
        self.watch_agent(id.clone(), pid);

        let mut status = String::new();
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(status_r)
            .map_err(|e| Error::io("read", "agent status", e))?;
        let read = tokio::time::timeout(START_TIMEOUT, rx.read_to_string(&mut status)).await;
        let report = status.lines().next().and_then(protocol::StartReport::parse);
        let reason = match (read, report) {
            (_, Some(protocol::StartReport::Ready { version, .. })) => {
                self.store.set_running(id, pid, agent_start, version)?;
                return Ok(());
            }
            (Err(_), _) => format!("the agent did not report within {START_TIMEOUT:?}"),
            (_, Some(protocol::StartReport::Failed(msg))) => msg,
            (_, Some(protocol::StartReport::CommandFailed(f))) => {
                let _ = nix::sys::signal::kill(spawned.pid, nix::sys::signal::Signal::SIGKILL);
                return Err(Error::from_start_failure(id, &crate::Ending::FailedToStart(f)).expect("a start failure"));
            }
            (Ok(_), None) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                format!("the agent exited during setup: {}", log.trim())
            }
        };
        let _ = nix::sys::signal::kill(spawned.pid, nix::sys::signal::Signal::SIGKILL);
        Err(Error::SandboxFailed { id: id.clone(), reason })
    }

    /// Reaps the agent (our child) when it exits and records how the sandbox ended, so a long-lived engine
    /// learns of an end right away; other processes learn of it through [`Engine::get`].
    fn watch_agent(self: &Arc<Self>, id: String, pid: i32) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = Arc::downgrade(self);
        handle.spawn(async move {
            hangar_runtime::process::wait_exit(pid).await;
            if let Some(engine) = engine.upgrade() {
                let _ = engine.finish_if_ended(&id).await;
            }
        });
    }

    /// Waits while another caller is still creating sandbox `id`, then returns its record.
    async fn await_started(&self, id: &str) -> Result<SandboxInfo> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT * 2;
        loop {
            let info = self.get(id).await?;
            if info.end_reason.as_deref() == Some("start_failed") {
                let reason = info.error.unwrap_or_default();
                return Err(Error::SandboxFailed { id: id.to_string(), reason });
            }
            if info.state != SandboxState::Creating || tokio::time::Instant::now() >= deadline {
                return Ok(info);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A sandbox's record, brought up to date (a sandbox whose agent is gone is marked ended and cleaned up).
    pub async fn get(&self, id: &str) -> Result<SandboxInfo> {
        Ok(self.record(id).await?.info)
    }

    /// Sandbox `id`'s record, brought up to date.
    async fn record(&self, id: &str) -> Result<Record> {
        let rec = self.store.get(id)?.ok_or_else(|| Error::NotFound(id.to_string()))?;
        if rec.info.state.is_final() {
            // An end is recorded before its cleanup finishes: whoever sees it here also sees nothing left.
            if self.finishing.try_lock().is_err() {
                drop(self.finishing.lock().await);
            }
            return Ok(rec);
        }
        if self.agent_alive(&rec) {
            self.enforce_lifetime(&rec);
            return Ok(rec);
        }
        self.finish_if_ended(id).await?;
        self.store.get(id)?.ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// All sandboxes, oldest first, brought up to date.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = vec![];
        for rec in self.store.list()? {
            if rec.info.state.is_final() || self.agent_alive(&rec) {
                if !rec.info.state.is_final() {
                    self.enforce_lifetime(&rec);
                }
                out.push(rec.info);
            } else {
                out.push(self.get(&rec.info.id).await?);
            }
        }
        Ok(out)
    }

    /// The host side's hold on a sandbox's lifetime: the agent ends its sandbox on time itself (its event loop,
    /// and a watchdog thread besides), so this only acts on an agent that is wedged for good, killing it
    /// (and with it the pid namespace) well past its lifetime and stop grace.
    fn enforce_lifetime(&self, rec: &Record) {
        const SLACK: Duration = Duration::from_secs(30);
        let (Some(pid), Some(start)) = (rec.agent_pid, rec.agent_start) else { return };
        let cfg_path = self.sandbox_dir(&rec.info.id).join("agent.json");
        // The agent's clock starts when it is spawned, just after its configuration is written.
        let Ok(spawned) = std::fs::metadata(&cfg_path).and_then(|m| m.modified()) else { return };
        if spawned.elapsed().unwrap_or_default() < Duration::from_millis(rec.info.max_lifetime_ms) {
            return;
        }
        let grace = std::fs::read(&cfg_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<AgentConfig>(&b).ok())
            .map_or(crate::DEFAULT_STOP_GRACE, |c| Duration::from_millis(c.stop_grace_ms));
        let deadline = Duration::from_millis(rec.info.max_lifetime_ms) + grace + SLACK;
        if spawned.elapsed().unwrap_or_default() >= deadline && hangar_runtime::process::process_alive(pid, start) {
            tracing::warn!(sandbox = rec.info.id, "the agent outlived the sandbox's lifetime: killing it");
            // Recorded as the agent would have: the sandbox ended because its lifetime passed.
            let end = EndRecord { reason: EndReason::LifetimeExceeded, code: None, signal: Some(libc::SIGKILL) };
            let _ = std::fs::write(
                self.sandbox_dir(&rec.info.id).join(END_RECORD_FILE),
                serde_json::to_vec(&end).unwrap_or_default(),
            );
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn agent_alive(&self, rec: &Record) -> bool {
        match (rec.agent_pid, rec.agent_start) {
            (Some(pid), Some(start)) => hangar_runtime::process::process_alive(pid, start),
            // Still being created by some process: alive unless it has been far too long.
            _ if rec.info.state == SandboxState::Pulling => {
                now_ms().saturating_sub(rec.info.created_at_ms) < PULL_TIMEOUT.as_millis() as u64
            }
            _ => {
                rec.info.state == SandboxState::Creating
                    && now_ms().saturating_sub(rec.info.created_at_ms) < START_TIMEOUT.as_millis() as u64 * 2
            }
        }
    }

    /// If the sandbox's agent is gone, records how it ended (once) and removes what it left on the host.
    async fn finish_if_ended(&self, id: &str) -> Result<()> {
        let _one_at_a_time = self.finishing.lock().await;
        let Some(rec) = self.store.get(id)? else {
            return Ok(());
        };
        if rec.info.state.is_final() {
            return Ok(());
        }
        if self.agent_alive(&rec) {
            return Ok(());
        }
        let end = std::fs::read(self.sandbox_dir(id).join(END_RECORD_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<EndRecord>(&b).ok());
        let ending = match end {
            Some(EndRecord { reason: EndReason::Exited, code: Some(0), .. }) => SandboxEnding {
                state: SandboxState::Completed,
                code: Some(0),
                signal: None,
                reason: "exited",
                error: None,
            },
            Some(EndRecord { reason: EndReason::Exited, code, signal }) => {
                SandboxEnding { state: SandboxState::Failed, code, signal, reason: "exited", error: None }
            }
            Some(EndRecord { reason: EndReason::Stopped, code, signal }) => {
                SandboxEnding { state: SandboxState::Terminated, code, signal, reason: "stopped", error: None }
            }
            Some(EndRecord { reason: EndReason::LifetimeExceeded, code, signal }) => SandboxEnding {
                state: SandboxState::Terminated,
                code,
                signal,
                reason: "lifetime_exceeded",
                error: None,
            },
            None => SandboxEnding {
                state: SandboxState::Terminated,
                code: None,
                signal: None,
                reason: "agent_died",
                error: None,
            },
        };
        // Record first: a concurrent finisher still finds exit.json until the record is final.
        self.store.set_ended(id, &ending)?;
        self.cleanup(id).await;
        Ok(())
    }

    /// Removes a sandbox's cgroup (killing anything left in it) and its directory. Idempotent.
    async fn cleanup(&self, id: &str) {
        let cg = self.cgroups.sandbox(id);
        let dir = self.sandbox_dir(id);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cg.remove(Duration::from_secs(5));
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
    }

    /// Stops a running sandbox: SIGTERM to its processes, SIGKILL after `grace`. Returns as soon as
    /// everything is gone (immediately when the main command exits on SIGTERM). Stopping an ended sandbox
    /// is a no-op that returns its record.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        let rec = self.store.get(id)?.ok_or_else(|| Error::NotFound(id.to_string()))?;
        if rec.info.state.is_final() {
            return Ok(rec.info);
        }
        if let (Some(pid), Some(start)) = (rec.agent_pid, rec.agent_start) {
            let asked = async {
                let mut conn = Conn::connect(&self.socket_path(id)).await.ok()?;
                conn.send(&Request::Stop { grace_ms: grace.as_millis() as u64 }).await.ok()?;
                conn.recv::<Response>().await.ok()
            };
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), asked).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while hangar_runtime::process::process_alive(pid, start) {
                if tokio::time::Instant::now() >= deadline {
                    // The agent did not go: killing PID 1 takes the whole pid namespace with it.
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
        self.finish_if_ended(id).await?;
        self.get(id).await
    }

    /// Stops (if needed) and forgets a sandbox.
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.stop(id, crate::DEFAULT_STOP_GRACE).await?;
        self.cleanup(id).await;
        if !self.store.delete(id)? {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Connects to a running sandbox's agent.
    pub(crate) async fn connect(&self, id: &str) -> Result<Conn> {
        Ok(self.connect_versioned(id).await?.0)
    }

    /// A connection to sandbox `id`'s agent, and the protocol version that agent speaks.
    pub(crate) async fn connect_versioned(&self, id: &str) -> Result<(Conn, u32)> {
        let rec = self.record(id).await?;
        if rec.info.state != SandboxState::Running {
            return Err(Error::NotRunning { id: id.to_string(), state: rec.info.state });
        }
        if !(protocol::MIN_VERSION..=protocol::VERSION).contains(&rec.agent_protocol) {
            let (min, max) = (protocol::MIN_VERSION, protocol::VERSION);
            return Err(Error::AgentVersion { id: id.to_string(), version: rec.agent_protocol, min, max });
        }
        match Conn::connect(&self.socket_path(id)).await {
            Ok(c) => Ok((c, rec.agent_protocol)),
            Err(e) => {
                let info = self.get(id).await?;
                if info.state != SandboxState::Running {
                    return Err(Error::NotRunning { id: id.to_string(), state: info.state });
                }
                Err(Error::io("connect to agent of", id, e))
            }
        }
    }

    pub(crate) fn gone(&self, id: &str, what: &str, e: std::io::Error) -> Error {
        Error::SandboxGone { id: id.to_string(), detail: format!("{what}: {e}") }
    }

    pub(crate) fn unexpected(&self, id: &str, path: &str, r: Option<Response>) -> Error {
        match r {
            Some(Response::Error { kind, message }) => agent_error(id, path, kind, message),
            None => Error::SandboxGone {
                id: id.to_string(),
                detail: format!("the agent closed the connection during an operation on {path}"),
            },
            Some(other) => Error::Agent { id: id.to_string(), message: format!("unexpected reply {other:?}") },
        }
    }
}

pub(crate) fn agent_error(id: &str, subject: &str, kind: ErrorKind, message: String) -> Error {
    let file = |k| Error::File { id: id.to_string(), path: subject.to_string(), kind: k, message: message.clone() };
    match kind {
        ErrorKind::NotFound => file(FileErrorKind::NotFound),
        ErrorKind::PermissionDenied => file(FileErrorKind::PermissionDenied),
        ErrorKind::IsADirectory => file(FileErrorKind::IsADirectory),
        ErrorKind::NotARegularFile => file(FileErrorKind::NotARegularFile),
        ErrorKind::NotAllowed => file(FileErrorKind::NotAllowed),
        ErrorKind::NoSpace => file(FileErrorKind::NoSpace),
        ErrorKind::CommandNotFound => Error::CommandNotFound { id: id.to_string(), message },
        ErrorKind::InvalidArgument => Error::InvalidArgument(message),
        ErrorKind::Stopping => Error::NotRunning { id: id.to_string(), state: SandboxState::Terminated },
        ErrorKind::Other => Error::Agent { id: id.to_string(), message },
        ErrorKind::ExecNotFound => Error::ExecNotFound { id: id.to_string(), exec: subject.to_string() },
        ErrorKind::ExecExpired => Error::ExecExpired { id: id.to_string(), exec: subject.to_string() },
        ErrorKind::ExecConflict => Error::InvalidArgument(message),
    }
}

/// The main command, once the image has filled it in if the caller gave none.
fn validate_command(c: &SandboxConfig) -> Result<()> {
    if c.command.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "command: none given and image {} has no default command",
            c.image
        )));
    }
    Ok(c.validate()?)
}
