//! The local backend: sandboxes on this machine, each built by `hangar_runtime` around its agent, recorded in
//! an SQLite store in the state directory (any process using the same directory sees the same sandboxes).
//! Creation is `launch`; this module observes them, enforces lifetimes, records ends, stops and removes them,
//! and connects to their agents (whose journal files it reads directly). Networks are `network`.

mod launch;
pub(crate) mod network;
mod store;

use crate::backend::AgentLink;
use crate::{now_ms, EngineConfig, Error, Result, SandboxEnding, SandboxInfo, SandboxState};
use hangar_agent_protocol as protocol;
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{AgentConfig, EndReason, EndRecord, Request, Response, END_RECORD_FILE};
use hangar_images::ImageStore;
use hangar_runtime::cgroups::Cgroups;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{Record, Store};

use hangar_types::MAIN_EXEC;
use launch::START_TIMEOUT;
/// The directory, among the sandboxes' own, that holds ended sandboxes' logs (see [`Local::logs_dir`]).
const LOGS_DIR: &str = ".logs";
/// A sandbox still `pulling` after this long, with nobody finishing it, is considered abandoned.
const PULL_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a sandbox may still be recorded as running after its agent refused a connection (it shuts down
/// once its main command ended) before the refusal is an error of its own.
const AGENT_GOING: Duration = Duration::from_secs(5);
/// How long a sandbox found running may be connected to without reading its record again (see
/// [`Local::connect`]).
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// The directory, under the state directory, where agents mount their sandboxes' roots
/// ([`Local::rootfs_mountpoint`]).
const ROOTFS_MOUNTPOINT: &str = "rootfs";

/// The local backend: one per state directory per process.
pub(crate) struct Local {
    pub(crate) cfg: EngineConfig,
    pub(crate) store: Store,
    pub(crate) images: ImageStore,
    pub(crate) cgroups: Cgroups,
    /// The volume that holds sandbox directories, when disk budgets are on.
    pub(crate) volume: Option<hangar_runtime::disk::DiskVolume>,
    /// Whether agents keep a spare exec helper ([`EngineConfig::spare_helpers`], resolved for this host).
    pub(crate) spare_helpers: bool,
    /// Serialises recording ends within this process, so whoever returns from a stop finds the cleanup done.
    pub(crate) finishing: tokio::sync::Mutex<()>,
    /// Sandboxes found running lately (see [`Local::connect`]).
    running: std::sync::Mutex<std::collections::HashMap<String, Running>>,
}

/// A sandbox found running: its agent's protocol version, until when that finding stands, and a connection to
/// its agent made ahead for the next request (a plain socket, of no runtime: the request that takes it may
/// run on another runtime than the one that made it, which may be gone by then).
struct Running {
    protocol: u32,
    until: std::time::Instant,
    spare: Option<std::os::unix::net::UnixStream>,
}

/// The connection the next request to a sandbox will take, to be made once this request is on its way (see
/// [`Local::connect`]): made when this is dropped. A request drops it once its first message went out (an
/// exec: once the agent answered it), so that the connection is made while the agent has nothing else to do,
/// not before the message is sent.
pub(crate) struct ConnectAhead {
    local: Arc<Local>,
    id: String,
}

impl Drop for ConnectAhead {
    fn drop(&mut self) {
        self.local.connect_ahead(&self.id);
    }
}

impl Local {
    /// Opens (creating if needed) the state directory and store, and detects the host's cgroup layout.
    pub(crate) fn open(cfg: EngineConfig) -> Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::InvalidArgument(
                "the embedded engine needs root (rootless sandboxes are not implemented yet)".into(),
            ));
        }
        for d in [cfg.state_dir.clone(), cfg.state_dir.join("sandboxes"), cfg.state_dir.join(ROOTFS_MOUNTPOINT)] {
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
        if cfg.favor_dynmods {
            hangar_runtime::cgroups::make_migrations_cheap()?;
        }
        let spare_helpers = cfg.spare_helpers.unwrap_or_else(|| !cgroups.joins_are_cheap());
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
        Ok(Self {
            cfg,
            store,
            images,
            cgroups,
            volume,
            spare_helpers,
            finishing: tokio::sync::Mutex::new(()),
            running: Default::default(),
        })
    }

    /// Removes the kept logs of sandboxes not among `known` (every record there is, read before this looks):
    /// an engine older than the rule that a record goes only after its log may have left some. Run with a
    /// listing, which reads every record anyway, not when the engine opens, which a short-lived CLI does on
    /// every command (it cost 16 µs a log: 1.6 s for 100,000 ended sandboxes).
    fn forget_orphaned_logs(&self, known: &std::collections::HashSet<&str>) {
        let Ok(dir) = std::fs::read_dir(self.cfg.state_dir.join("sandboxes").join(LOGS_DIR)) else { return };
        for entry in dir.flatten() {
            if !known.contains(entry.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Removes image layers and blobs that no image references and no live sandbox uses; returns the
    /// number of layers and blobs removed.
    pub(crate) async fn prune_images(self: &Arc<Self>) -> Result<(usize, usize)> {
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

    /// Where every agent mounts its sandbox's root filesystem before it becomes the root: one empty directory
    /// for all, since each agent mounts in a mount namespace of its own (one directory fewer to make and
    /// remove per sandbox).
    pub(crate) fn rootfs_mountpoint(&self) -> PathBuf {
        self.cfg.state_dir.join(ROOTFS_MOUNTPOINT)
    }

    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("sandboxes").join(id)
    }

    /// Where an ended sandbox's log (its main command's journal) is kept until the sandbox is forgotten. On
    /// the volume of the sandbox directories, so that keeping it is a rename.
    pub(crate) fn logs_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("sandboxes").join(LOGS_DIR).join(id)
    }

    /// Moves the main command's journal out of the sandbox's directory (which goes next), with its final
    /// progress: the one the agent recorded, or, when the agent died first, what its files tell.
    fn keep_logs(&self, id: &str) {
        use hangar_journal::Progress;
        let dir = self.sandbox_dir(id);
        let from = dir.join(hangar_journal::dir(MAIN_EXEC));
        if !from.is_dir() {
            return;
        }
        if Progress::load(&from).is_none() {
            let recovered = Progress::recover(&from, hangar_types::LOG_JOURNAL_CAP).map(|mut p| {
                p.end = Some(crate::ExecEnd::sandbox_gone(p.written));
                p
            });
            let saved = recovered.and_then(|p| {
                let d = std::fs::File::open(&dir)?;
                hangar_journal::persist(std::os::fd::AsFd::as_fd(&d), MAIN_EXEC, &p)
            });
            if let Err(e) = saved {
                tracing::warn!(sandbox = id, "the log's end could not be recovered: {e}");
            }
        }
        let to = self.logs_dir(id);
        let moved = to.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::rename(&from, &to));
        if let Err(e) = moved {
            tracing::warn!(sandbox = id, "the log could not be kept: {e}");
        }
    }

    pub(crate) fn socket_path(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("agent.sock")
    }

    /// A sandbox's record, brought up to date (a sandbox whose agent is gone is marked ended and cleaned up).
    pub(crate) async fn get(&self, id: &str) -> Result<SandboxInfo> {
        Ok(self.record(id).await?.info)
    }

    /// Forgets sandboxes that ended longer ago than the engine's retention (their directories went at their
    /// end; a cleanup again makes sure of it).
    async fn expire_ended(&self) -> Result<()> {
        let Some(keep) = self.cfg.ended_retention else { return Ok(()) };
        for id in self.store.ended_before(now_ms().saturating_sub(keep.as_millis() as u64))? {
            // The record goes last, so that nothing of a sandbox outlives it (see `forget_orphaned_logs`).
            self.cleanup(&id).await;
            let _ = std::fs::remove_dir_all(self.logs_dir(&id));
            self.store.delete(&id)?;
        }
        Ok(())
    }

    /// Sandbox `id`'s record, brought up to date.
    pub(crate) async fn record(&self, id: &str) -> Result<Record> {
        let rec = self.store.get(id)?.ok_or_else(|| Error::NotFound(id.to_string()))?;
        let retention = self.cfg.ended_retention.map(|d| d.as_millis() as u64);
        if rec.info.ended_at_ms.zip(retention).is_some_and(|(at, keep)| now_ms().saturating_sub(at) > keep) {
            self.expire_ended().await?;
            return Err(Error::NotFound(id.to_string()));
        }
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
    pub(crate) async fn list(&self) -> Result<Vec<SandboxInfo>> {
        self.expire_ended().await?;
        let records = self.store.list()?;
        self.forget_orphaned_logs(&records.iter().map(|r| r.info.id.as_str()).collect());
        let mut out = vec![];
        for rec in records {
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
    /// and a watchdog timer besides), so this only acts on an agent that is wedged for good, killing it
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
            .map_or(crate::DEFAULT_STOP_GRACE, |c| Duration::from_millis(c.workload.stop_grace_ms));
        let deadline = Duration::from_millis(rec.info.max_lifetime_ms) + grace + SLACK;
        if spawned.elapsed().unwrap_or_default() >= deadline && hangar_runtime::process::process_alive(pid, start) {
            tracing::warn!(sandbox = rec.info.id, "the agent outlived the sandbox's lifetime: killing it");
            // Recorded as the agent would have: the sandbox ended because its lifetime passed.
            let end =
                EndRecord { reason: EndReason::LifetimeExceeded, code: None, signal: Some(libc::SIGKILL), log: None };
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
    pub(crate) async fn finish_if_ended(&self, id: &str) -> Result<()> {
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
        let ending = SandboxEnding::of(end.as_ref());
        // Record first: a concurrent finisher still finds exit.json until the record is final.
        self.store.set_ended(id, &ending)?;
        self.keep_logs(id);
        self.cleanup(id).await;
        Ok(())
    }

    /// Removes a sandbox's cgroup (killing anything left in it), its network's rules and resolver, and its
    /// directory. Idempotent.
    pub(crate) async fn cleanup(&self, id: &str) {
        self.forget_running(id);
        let cg = self.cgroups.sandbox(id);
        let dir = self.sandbox_dir(id);
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cg.remove(Duration::from_secs(5));
            network::remove_network(&dir, &id);
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
    }

    /// Stops a running sandbox: SIGTERM to its processes, SIGKILL after `grace`. Returns as soon as
    /// everything is gone (immediately when the main command exits on SIGTERM). Stopping an ended sandbox
    /// is a no-op that returns its record.
    pub(crate) async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        let rec = self.store.get(id)?.ok_or_else(|| Error::NotFound(id.to_string()))?;
        if rec.info.state.is_final() {
            return Ok(rec.info);
        }
        if let (Some(pid), Some(start)) = (rec.agent_pid, rec.agent_start) {
            use hangar_runtime::process::{pidfd_exited, pidfd_open, process_alive};
            // Opened before anything else: once the pid is known to be this agent's, the pidfd stays its.
            let watched = pidfd_open(pid).ok().filter(|_| process_alive(pid, start));
            let asked = async {
                let mut conn = Conn::connect(&self.socket_path(id)).await.ok()?;
                conn.send(&Request::Stop { grace_ms: grace.as_millis() as u64 }).await.ok()?;
                conn.recv::<Response>().await.ok()
            };
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), asked).await;
            if let Some(fd) = watched {
                let exited = pidfd_exited(fd);
                tokio::pin!(exited);
                if tokio::time::timeout(Duration::from_secs(2), &mut exited).await.is_err() {
                    // The agent did not go: killing PID 1 takes the whole pid namespace with it.
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    exited.await;
                }
            }
            let _ =
                nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
        self.finish_if_ended(id).await?;
        self.get(id).await
    }

    /// Stops (if needed) and forgets a sandbox.
    pub(crate) async fn remove(&self, id: &str) -> Result<()> {
        self.stop(id, crate::DEFAULT_STOP_GRACE).await?;
        self.cleanup(id).await;
        let _ = std::fs::remove_dir_all(self.logs_dir(id));
        if !self.store.delete(id)? {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// The log of an ended sandbox, from where [`Local::logs_dir`] keeps it.
    pub(crate) async fn kept_log(&self, id: &str, from: [u64; 2]) -> Result<crate::ExecStream> {
        let rec = self.get(id).await?;
        let dir = self.logs_dir(id);
        let progress = match (hangar_journal::Progress::load(&dir), &rec.error) {
            (Some(p), _) => p,
            // A sandbox that failed before its main command ran has an empty log, which says why.
            (None, Some(why)) => {
                let failure = hangar_types::StartFailure::new(hangar_types::StartFailureKind::Other, why.clone());
                hangar_journal::Progress { end: Some(crate::ExecEnd::failed_to_start(failure)), ..Default::default() }
            }
            // A sandbox without a main command: its log is empty and ended with it, and its agent writes none.
            (None, None) if rec.command.is_empty() => {
                hangar_journal::Progress { end: Some(crate::ExecEnd::sandbox_gone([0, 0])), ..Default::default() }
            }
            (None, None) => return Err(Error::ExecNotFound { id: id.to_string(), exec: MAIN_EXEC.to_string() }),
        };
        Ok(crate::ExecStream::kept_log(&rec, dir, progress, from))
    }

    /// A connection to running sandbox `id`'s agent: its journal files are read here, unless the engine was
    /// configured to have them sent inline (and the agent can).
    ///
    /// A sandbox found running less than [`RECHECK_AFTER`] ago is connected to straight away: an agent that
    /// accepts the connection is running (it closes its socket before it ends, and a removed sandbox has no
    /// socket), so the store, the agent's `/proc` entry and its lifetime need not be read again on every
    /// exec's path (tens of microseconds of every exec's round trip here). Should the connection fail, the record
    /// says why, as before. (The lifetime backstop, which only acts on an agent wedged well past its
    /// lifetime, still runs at least once a second for a sandbox that is exec'd in.)
    ///
    /// The connection itself is made ahead once requests follow one another: each request on this path
    /// takes the one made after the last (if it is still open: no end of file from the agent), and another
    /// is made once its first message is out ([`ConnectAhead`]), by the caller's thread (made before it, or
    /// by a task on another thread, it held up the request: A/B, 20-50 µs of the round trip). A request then
    /// costs one write on its path, not a new socket, a connect, and the agent's accept. (Not after a first
    /// request: a one-shot client, `hangar exec`, would only pay for it.)
    pub(crate) async fn connect(self: &Arc<Self>, id: &str) -> Result<AgentLink> {
        let now = std::time::Instant::now();
        let known = {
            let mut running = self.running.lock().expect("running");
            running.get_mut(id).filter(|r| now < r.until).map(|r| (r.protocol, r.spare.take()))
        };
        if let Some((protocol, spare)) = known {
            let conn = match spare.filter(hangar_agent_protocol::codec::peer_is_there) {
                Some(socket) => Conn::from_socket(socket),
                None => Conn::connect(&self.socket_path(id)).await,
            };
            if let Ok(conn) = conn {
                let mut link = self.link(id, conn, protocol);
                link.ahead = Some(ConnectAhead { local: self.clone(), id: id.to_string() });
                return Ok(link);
            }
            self.forget_running(id);
        }
        let rec = self.record(id).await?;
        if rec.info.state != SandboxState::Running {
            return Err(Error::NotRunning { id: id.to_string(), state: rec.info.state });
        }
        if !(protocol::MIN_VERSION..=protocol::VERSION).contains(&rec.agent_protocol) {
            let (min, max) = (protocol::MIN_VERSION, protocol::VERSION);
            return Err(Error::AgentVersion { id: id.to_string(), version: rec.agent_protocol, min, max });
        }
        let conn = match Conn::connect(&self.socket_path(id)).await {
            Ok(c) => c,
            Err(e) => {
                // An agent that is shutting down (its main command ended) closes its socket a moment before
                // it exits: the sandbox is ending, which its state says once the end is recorded.
                let deadline = tokio::time::Instant::now() + AGENT_GOING;
                loop {
                    let info = self.get(id).await?;
                    if info.state != SandboxState::Running {
                        return Err(Error::NotRunning { id: id.to_string(), state: info.state });
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::io("connect to agent of", id, e));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let now = std::time::Instant::now();
        let found = Running { protocol: rec.agent_protocol, until: now + RECHECK_AFTER, spare: None };
        // A finding renewed within a second of lapsing still has its task (which forgets it at once
        // otherwise); one that lapsed long ago lost it with the runtime it ran on, and gets another.
        let watched = match self.running.lock().expect("running").entry(id.to_string()) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let watched = e.get().until + RECHECK_AFTER > now;
                (e.get_mut().protocol, e.get_mut().until) = (found.protocol, found.until);
                watched
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(found);
                false
            }
        };
        if !watched {
            self.forget_when_lapsed(id);
        }
        Ok(self.link(id, conn, rec.agent_protocol))
    }

    /// Makes the connection the next request to sandbox `id` takes (see [`Local::connect`]), unless one is
    /// there.
    fn connect_ahead(&self, id: &str) {
        // (Nor for a sandbox no longer found running.)
        if self.running.lock().expect("running").get(id).is_none_or(|r| r.spare.is_some()) {
            return;
        }
        let Ok(socket) = hangar_agent_protocol::codec::connect_socket(&self.socket_path(id)) else { return };
        if let Some(r) = self.running.lock().expect("running").get_mut(id) {
            r.spare.get_or_insert(socket);
        }
    }

    /// Forgets that sandbox `id` runs once that finding lapses (unless it is renewed meanwhile), and with it
    /// the connection made ahead: an engine holds no connection to a sandbox it stopped talking to (a
    /// server that exec'd in a thousand sandboxes would otherwise hold a thousand descriptors).
    fn forget_when_lapsed(self: &Arc<Self>, id: &str) {
        let (engine, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            loop {
                let until = {
                    let mut running = engine.running.lock().expect("running");
                    match running.get(&id) {
                        Some(r) if r.until > std::time::Instant::now() => r.until,
                        Some(_) => {
                            running.remove(&id);
                            return;
                        }
                        None => return,
                    }
                };
                tokio::time::sleep_until(until.into()).await;
            }
        });
    }

    fn link(&self, id: &str, conn: Conn, protocol: u32) -> AgentLink {
        let inline = self.cfg.inline_journals && protocol >= 3;
        AgentLink {
            ahead: None,
            conn,
            protocol,
            journals: (!inline).then(|| self.sandbox_dir(id)),
            kept_log: Some(self.logs_dir(id)),
        }
    }

    fn forget_running(&self, id: &str) {
        self.running.lock().expect("running").remove(id);
    }
}
