//! Sandboxes' networks: made before the agent starts (the namespace, the veth pair, the rules, the resolver),
//! changed while they run, removed with them, and reconciled after a crash.

use super::Local;
use crate::{Error, Result, SandboxState};
use hangar_agent_protocol::{NetdConfig, PublishedPort, NETD_ARG, NETD_FILE, NETD_PID_FILE, PORTS_FILE, PUBLISH_ARG};
use hangar_runtime::net::{SandboxNet, Subnet};
use hangar_types::{NetworkMode, NetworkPolicy};
use std::io::BufRead;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// How the engine gives sandboxes networks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkConfig {
    /// The policy of sandboxes that ask for none (loopback only unless set).
    pub default: NetworkPolicy,
    /// Where sandboxes' addresses come from.
    pub subnet: Subnet,
    /// The resolvers sandboxes' questions go to; empty: the host's (`/etc/resolv.conf`).
    pub dns: Vec<SocketAddr>,
}

impl NetworkConfig {
    /// From `$HANGAR_NETWORK` (`none` or `egress`: the default mode), `$HANGAR_NET_SUBNET` (`10.213.0.0/16`)
    /// and `$HANGAR_DNS` (comma-separated `IP` or `IP:PORT`).
    pub fn from_env() -> Result<Self> {
        let mut c = Self::default();
        if let Ok(v) = std::env::var("HANGAR_NETWORK") {
            c.default.mode = NetworkMode::parse(v.trim())
                .ok_or_else(|| Error::InvalidArgument(format!("HANGAR_NETWORK: {v:?} is not none or egress")))?;
        }
        if let Ok(v) = std::env::var("HANGAR_NET_SUBNET") {
            c.subnet = Subnet::parse(v.trim()).ok_or_else(|| {
                Error::InvalidArgument(format!("HANGAR_NET_SUBNET: {v:?} is not an IPv4 range such as 10.213.0.0/16"))
            })?;
        }
        if let Ok(v) = std::env::var("HANGAR_DNS") {
            c.dns = parse_resolvers(&v)
                .ok_or_else(|| Error::InvalidArgument(format!("HANGAR_DNS: {v:?} is not a list of IP[:PORT]")))?;
        }
        Ok(c)
    }
}

/// `IP` or `IP:PORT` entries separated by commas or spaces (port 53 by default).
pub fn parse_resolvers(s: &str) -> Option<Vec<SocketAddr>> {
    s.split([',', ' ']).filter(|t| !t.is_empty()).map(|t| parse_resolver(t.trim())).collect()
}

fn parse_resolver(t: &str) -> Option<SocketAddr> {
    t.parse::<SocketAddr>().ok().or_else(|| Some(SocketAddr::new(t.parse().ok()?, 53)))
}

/// The nameservers of the host's `/etc/resolv.conf`.
fn host_resolvers() -> Vec<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok().map(|ip| SocketAddr::new(ip, 53)))
        .collect()
}

/// Whether this process already removed the rules of sandboxes that are gone.
static RECONCILED: AtomicBool = AtomicBool::new(false);

/// A sandbox's network while it is being made: the namespace for its agent to join.
pub(crate) struct Prepared {
    pub netns: OwnedFd,
    pub net: SandboxNet,
}

impl Local {
    /// The policy a create request gets.
    pub(crate) fn network_for(&self, asked: Option<&NetworkPolicy>) -> NetworkPolicy {
        asked.cloned().unwrap_or_else(|| self.cfg.network.default.clone())
    }

    /// Makes sandbox `id`'s network and starts its resolver; `None` for a sandbox with loopback only. Runs
    /// before its agent is spawned, so the network is whole before anything runs in it.
    pub(crate) async fn prepare_network(&self, id: &str, policy: &NetworkPolicy) -> Result<Option<Prepared>> {
        if policy.mode == NetworkMode::None {
            return Ok(None);
        }
        self.reconcile_networks().await;
        let (subnet, lock) = (self.cfg.network.subnet, self.cfg.state_dir.join("network.lock"));
        let upstreams = match self.cfg.network.dns.is_empty() {
            true => host_resolvers(),
            false => self.cfg.network.dns.clone(),
        };
        let (id, policy, dir, agent) =
            (id.to_string(), policy.clone(), self.sandbox_dir(id), self.cfg.agent_bin.clone());
        tokio::task::spawn_blocking(move || {
            let failed = |e: Error| Error::SandboxFailed { id: id.clone(), reason: format!("its network: {e}") };
            let (netns, net) =
                hangar_runtime::net::create(&id, subnet, &policy, &lock).map_err(|e| failed(e.into()))?;
            let cfg = NetdConfig { net: net.clone(), policy, upstreams };
            write_netd_config(&dir, &cfg)?;
            start_netd(&agent, &dir).map_err(failed)?;
            Ok(Some(Prepared { netns, net }))
        })
        .await
        .map_err(|e| Error::Internal(format!("preparing the network panicked: {e}")))?
    }

    /// Changes a running sandbox's network policy. It takes effect at once for new connections and the next
    /// questions to its resolver (connections already open stay up). A sandbox made with loopback only cannot
    /// be given a network later.
    pub(crate) async fn set_network(&self, id: &str, policy: NetworkPolicy) -> Result<crate::SandboxInfo> {
        policy.validate()?;
        let rec = self.record(id).await?;
        if rec.info.state != SandboxState::Running {
            return Err(Error::NotRunning { id: id.to_string(), state: rec.info.state });
        }
        if rec.info.network.mode != policy.mode {
            return Err(Error::InvalidArgument(format!(
                "network: sandbox {id} was made with mode {}; its mode cannot change while it runs",
                rec.info.network.mode.as_str()
            )));
        }
        if policy.mode == NetworkMode::Egress {
            let dir = self.sandbox_dir(id);
            let p = policy.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                let mut cfg = NetdConfig::load(&dir).map_err(Error::Internal)?;
                hangar_runtime::net::set_policy(&cfg.net, &p)?;
                cfg.policy = p;
                write_netd_config(&dir, &cfg)?;
                if let Some(pid) = netd_pid(&dir) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP);
                }
                Ok(())
            })
            .await
            .map_err(|e| Error::Internal(format!("changing the network panicked: {e}")))??;
        }
        self.store.set_network(id, &policy)?;
        self.get(id).await
    }

    /// Publishes port `port` of running sandbox `id` on the host's loopback (once: publishing it again gives
    /// the same address) and returns the address. A connection there reaches `127.0.0.1:PORT` inside the
    /// sandbox, whatever its network mode; the sandbox's own policy is not involved (nothing inside can use
    /// the published port to get out).
    pub(crate) async fn publish_port(&self, id: &str, port: u16) -> Result<SocketAddr> {
        if port == 0 {
            return Err(Error::InvalidArgument("port: 0 is not a port".into()));
        }
        let rec = self.record(id).await?;
        let (Some(pid), Some(start), SandboxState::Running) = (rec.agent_pid, rec.agent_start, rec.info.state) else {
            return Err(Error::NotRunning { id: id.to_string(), state: rec.info.state });
        };
        let (dir, agent, lock) =
            (self.sandbox_dir(id), self.cfg.agent_bin.clone(), self.cfg.state_dir.join("network.lock"));
        tokio::task::spawn_blocking(move || {
            let _held = hangar_runtime::net::hold(&lock)?;
            let mut ports: Vec<PublishedPort> = published(&dir);
            ports.retain(|p| hangar_runtime::process::process_alive(p.pid, p.start));
            if let Some(p) = ports.iter().find(|p| p.port == port) {
                return Ok(p.address);
            }
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind", "127.0.0.1:0", e))?;
            let address = listener.local_addr().map_err(|e| Error::io("getsockname", "published port", e))?;
            let child = std::process::Command::new(&agent)
                .args([PUBLISH_ARG, &pid.to_string(), &start.to_string(), &port.to_string()])
                .stdin(std::process::Stdio::from(OwnedFd::from(listener)))
                .stdout(std::process::Stdio::null())
                .stderr(
                    std::fs::File::create(dir.join(format!("port-{port}.log")))
                        .map_err(|e| Error::io("create", "port log", e))?,
                )
                .process_group(0)
                .spawn()
                .map_err(|e| Error::io("start", agent.display(), e))?;
            let proxy = child.id() as i32;
            let proxy_start = hangar_runtime::process::process_start(proxy).map_or(0, |(s, _)| s);
            std::thread::spawn(move || {
                let mut child = child;
                child.wait()
            });
            ports.push(PublishedPort { port, address, pid: proxy, start: proxy_start });
            let body =
                serde_json::to_vec(&ports).map_err(|e| Error::Internal(format!("encoding {PORTS_FILE}: {e}")))?;
            let path = dir.join(PORTS_FILE);
            std::fs::write(&path, body).map_err(|e| Error::io("write", path.display(), e))?;
            Ok(address)
        })
        .await
        .map_err(|e| Error::Internal(format!("publishing a port panicked: {e}")))?
    }

    /// The running sandbox's published ports: (port inside, address on the host).
    pub(crate) async fn published_ports(&self, id: &str) -> Result<Vec<(u16, SocketAddr)>> {
        self.record(id).await?;
        let ports = published(&self.sandbox_dir(id));
        Ok(ports
            .into_iter()
            .filter(|p| hangar_runtime::process::process_alive(p.pid, p.start))
            .map(|p| (p.port, p.address))
            .collect())
    }

    /// Removes the rules of sandboxes that are no longer running (an engine that crashed before cleaning up).
    /// Runs once per process: before its first network is made, or when a server starts.
    ///
    /// ```no_run
    /// # async fn demo(engine: std::sync::Arc<hangar_engine::Engine>) {
    /// engine.reconcile_networks().await;
    /// # }
    /// ```
    pub(crate) async fn reconcile_networks(&self) {
        if RECONCILED.swap(true, Ordering::SeqCst) {
            return;
        }
        use hangar_runtime::net::key_of;
        let Ok(keys) = tokio::task::spawn_blocking(hangar_runtime::net::installed).await else { return };
        let Ok(records) = self.store.list() else { return };
        let live: std::collections::HashSet<String> =
            records.iter().filter(|r| !r.info.state.is_final()).map(|r| key_of(&r.info.id)).collect();
        // Only this engine's: the host's table also holds the rules of engines with other state directories.
        // Its sandboxes are those it has a record of, or a directory (rules go before the directory, so a
        // removal cut short leaves the directory).
        let mut ours: std::collections::HashSet<String> = records.iter().map(|r| key_of(&r.info.id)).collect();
        if let Ok(dirs) = std::fs::read_dir(self.cfg.state_dir.join("sandboxes")) {
            ours.extend(dirs.flatten().map(|d| key_of(&d.file_name().to_string_lossy())));
        }
        for key in keys.unwrap_or_default().into_iter().filter(|k| ours.contains(k) && !live.contains(k)) {
            let _ = tokio::task::spawn_blocking(move || hangar_runtime::net::remove(&key)).await;
        }
    }
}

/// Stops the resolver of the sandbox whose state directory is `dir` and removes its rules (its interfaces
/// went with its namespace). Idempotent; blocking.
pub(crate) fn remove_network(dir: &Path, id: &str) {
    let proxies = published(dir).into_iter().filter(|p| hangar_runtime::process::process_alive(p.pid, p.start));
    for pid in netd_pid(dir).into_iter().chain(proxies.map(|p| p.pid)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        while hangar_runtime::process::process_start(pid).is_some_and(|(_, alive)| alive) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    if dir.join(NETD_FILE).exists() {
        if let Err(e) = hangar_runtime::net::remove(id) {
            tracing::warn!(sandbox = id, "cannot remove the network rules: {e}");
        }
    }
}

/// The ports the sandbox whose state directory is `dir` published (some proxies may have left).
fn published(dir: &Path) -> Vec<PublishedPort> {
    std::fs::read(dir.join(PORTS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn write_netd_config(dir: &Path, cfg: &NetdConfig) -> Result<()> {
    let (path, tmp) = (dir.join(NETD_FILE), dir.join(format!("{NETD_FILE}.tmp")));
    let body = serde_json::to_vec(cfg).map_err(|e| Error::Internal(format!("encoding {NETD_FILE}: {e}")))?;
    std::fs::write(&tmp, body).map_err(|e| Error::io("write", tmp.display(), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", path.display(), e))
}

/// The pid of the sandbox's network helper while it runs (recorded with its start time, so a reused pid is
/// never signalled).
fn netd_pid(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join(NETD_PID_FILE)).ok()?;
    let (pid, start) = text.trim().split_once(' ')?;
    let (pid, start) = (pid.parse().ok()?, start.parse().ok()?);
    hangar_runtime::process::process_alive(pid, start).then_some(pid)
}

/// Starts the sandbox's network helper and waits until it serves (it prints `ok`, or why it cannot). It
/// leaves on its own when the sandbox's interface is gone.
fn start_netd(agent: &Path, dir: &Path) -> Result<()> {
    let mut child = std::process::Command::new(agent)
        .arg(NETD_ARG)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("netd.log")).map_err(|e| Error::io("create", "netd.log", e))?)
        // Out of the caller's process group: a terminal's Ctrl-C is for the CLI, not the sandbox's resolver.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("start", agent.display(), e))?;
    let pid = child.id() as i32;
    let start = hangar_runtime::process::process_start(pid).map_or(0, |(s, _)| s);
    std::fs::write(dir.join(NETD_PID_FILE), format!("{pid} {start}"))
        .map_err(|e| Error::io("write", NETD_PID_FILE, e))?;
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if line.trim() != "ok" {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.join("netd.log")).unwrap_or_default();
        return Err(Error::SandboxFailed {
            id: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            reason: format!("its resolver did not start: {}", log.trim()),
        });
    }
    // Reaped by whoever outlives it: a thread here while this process lives, init after.
    std::thread::spawn(move || child.wait());
    Ok(())
}
