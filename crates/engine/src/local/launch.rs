//! Creating a sandbox: its request checked, its image resolved (pulled if missing), its layout, cgroup and
//! state directory made, its agent spawned into fresh namespaces, and the agent's first report read.

use super::Local;
use crate::{new_id, Error, Result, SandboxConfig, SandboxEnding, SandboxInfo, SandboxState};
use hangar_agent_protocol as protocol;
use hangar_agent_protocol::{AgentConfig, Workload};
use hangar_runtime::{AgentFds, Limits, MountSpec, OverlaySpec, RootfsSpec, SandboxSpec};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long a new sandbox may take to report that it is built.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Local {
    /// Creates a sandbox and waits until its main command is running. A missing image is pulled first,
    /// with the sandbox listed as `pulling` (and its progress) meanwhile.
    pub(crate) async fn create(self: &Arc<Self>, mut c: SandboxConfig) -> Result<SandboxInfo> {
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
        let state = if local { SandboxState::Creating } else { SandboxState::Pulling };
        let pids = Some(c.pids.unwrap_or(crate::DEFAULT_PIDS_LIMIT));
        let mut info = SandboxInfo::new(id.clone(), &c, state, pids, self.network_for(c.network.as_ref()));
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
            if std::mem::take(&mut c.image_command) {
                if layout.command.is_empty() {
                    let image = &c.image;
                    return Err(Error::InvalidArgument(format!("image_command: image {image} has no default command")));
                }
                c.command = layout.command.clone();
            }
            Ok(c.validate().map(|()| layout)?)
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
        // Each overlay's upper directory is `disk/<name>` and its work directory `disk/<name>.work`: every
        // directory costs a mkdir and an rmdir (~0.1 ms together on ext4), so there are no others.
        let overlay = |name: &str, lower: Vec<PathBuf>| -> Result<OverlaySpec> {
            let (upper, work) = (disk.join(name), disk.join(format!("{name}.work")));
            mkdir(&upper)?;
            mkdir(&work)?;
            Ok(OverlaySpec { lower, upper, work })
        };
        let mut mounts = vec![];
        for (target, lower) in &layout.overlays {
            mounts.push(MountSpec::Overlay {
                target: target.clone(),
                overlay: overlay(&format!("at_{}", target.replace('/', "_")), lower.clone())?,
            });
        }
        let root = overlay("root", layout.root_layers.clone())?;
        let net = self.prepare_network(id, &info.network).await?;
        write_name_files(&root.upper, id, net.as_ref().map(|n| &n.net))?;
        let rootfs = RootfsSpec { root, mounts, mountpoint: self.rootfs_mountpoint() };
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
                cgroup_joins: cgroup.agent_join_files(),
                exec_cgroup_parents: cgroup.exec_parents(),
                netns: net.is_some(),
            },
            workload: Workload {
                main: c.command.clone(),
                env,
                workdir: c.workdir.clone().unwrap_or(layout.workdir),
                lifetime_ms: c.max_lifetime.as_millis() as u64,
                stop_grace_ms: c.stop_grace.as_millis() as u64,
                user: layout.user.clone(),
                journal_budget: self.cfg.journal_budget,
            },
            spare_helpers: self.spare_helpers,
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
                netns: net.as_ref().map(|n| n.netns.as_fd()),
            },
        )?;
        drop((listener, log, state_dir, status_w, config, net));
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
    /// learns of an end right away; other processes learn of it through [`Local::get`].
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
}

/// The sandbox's `/etc/resolv.conf` and `/etc/hosts`, written into its writable layer (`upper`, the root
/// overlay's upper directory) before the overlay is mounted, as container runtimes provide them: its resolver
/// when it has a network (else no resolver, so lookups fail at once), and its own name.
fn write_name_files(upper: &Path, hostname: &str, net: Option<&hangar_runtime::net::SandboxNet>) -> Result<()> {
    let etc = upper.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| Error::io("mkdir", etc.display(), e))?;
    let (resolv, own) = match net {
        Some(n) => (format!("nameserver {}\noptions timeout:2 attempts:2\n", n.gateway), n.address.to_string()),
        None => ("# network mode none: no resolver\n".to_string(), "127.0.1.1".to_string()),
    };
    let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n");
    for (name, body) in [("resolv.conf", resolv), ("hosts", hosts)] {
        let path = etc.join(name);
        std::fs::write(&path, body).map_err(|e| Error::io("write", path.display(), e))?;
    }
    Ok(())
}
