//! The engine and its backend seam: where sandboxes run (this machine, or a Kubernetes cluster) is the
//! backend's business; execs, their journals, stdin and files go through the sandbox's agent the same way on
//! every backend ([`AgentLink`]), in `exec` and `files`.

use crate::local::Local;
use crate::{EngineConfig, Error, FileErrorKind, Result, SandboxConfig, SandboxInfo, SandboxState};
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{ErrorKind, Response};
use hangar_images::ImageStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The engine: sandboxes and execs as objects, on one backend. One per state directory per process; cheap to
/// share behind an `Arc`.
pub struct Engine {
    backend: Backend,
}

/// Where sandboxes run.
enum Backend {
    /// On this machine.
    Local(Arc<Local>),
    /// As Pods of a Kubernetes cluster.
    #[cfg(feature = "kubernetes")]
    Kubernetes(Box<crate::kubernetes::Cluster>),
}

/// What the local backend alone can do, refused on others with this error.
#[cfg(feature = "kubernetes")]
pub(crate) fn local_only(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is not available on the Kubernetes backend"))
}

/// A connection to a sandbox's agent, with what the engine needs to know to use it.
pub(crate) struct AgentLink {
    /// The connection.
    pub conn: Conn,
    /// The agent's protocol version.
    pub protocol: u32,
    /// Where the agent's journals can be read here (the sandbox's state directory); `None` when they travel
    /// inline on the connection (`Request::Inline`).
    pub journals: Option<PathBuf>,
    /// Where the main command's log is kept here once the sandbox ended, if it is kept here.
    pub kept_log: Option<PathBuf>,
    /// Makes the connection for the next request once dropped (see `ConnectAhead`): drop it after the first
    /// message went out.
    pub ahead: Option<crate::local::ConnectAhead>,
}

impl Engine {
    /// Opens the local backend: creates (if needed) the state directory and store, and detects the host's
    /// cgroup layout.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>> {
        Ok(Arc::new(Self { backend: Backend::Local(Arc::new(Local::open(cfg)?)) }))
    }

    /// Opens the Kubernetes backend: sandboxes become Pods in `kube.namespace` (see [`crate::KubernetesConfig`]).
    /// `cfg`'s state directory holds the image store `image_command` reads images' commands from.
    #[cfg(feature = "kubernetes")]
    pub async fn kubernetes(cfg: EngineConfig, kube: crate::KubernetesConfig) -> Result<Arc<Self>> {
        let cluster = crate::kubernetes::Cluster::open(cfg, kube).await?;
        Ok(Arc::new(Self { backend: Backend::Kubernetes(Box::new(cluster)) }))
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        match &self.backend {
            Backend::Local(l) => &l.cfg,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => &k.cfg,
        }
    }

    /// The image store sandboxes are made from.
    pub fn images(&self) -> &ImageStore {
        match &self.backend {
            Backend::Local(l) => &l.images,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => &k.images,
        }
    }

    /// Removes image layers and blobs that no image references and no live sandbox uses; returns the
    /// number of layers and blobs removed.
    pub async fn prune_images(&self) -> Result<(usize, usize)> {
        match &self.backend {
            Backend::Local(l) => l.prune_images().await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => {
                let images = k.images.clone();
                tokio::task::spawn_blocking(move || images.prune(|| Ok::<_, Error>(Default::default())))
                    .await
                    .map_err(|e| Error::Internal(format!("pruning the image store panicked: {e}")))?
            }
        }
    }

    /// Creates a sandbox and waits until its main command is running. A missing image is pulled first,
    /// with the sandbox listed as `pulling` (and its progress) meanwhile.
    pub async fn create(&self, c: SandboxConfig) -> Result<SandboxInfo> {
        match &self.backend {
            Backend::Local(l) => l.create(c).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.create(c).await,
        }
    }

    /// A sandbox's record, brought up to date (a sandbox whose agent is gone is marked ended and cleaned up).
    pub async fn get(&self, id: &str) -> Result<SandboxInfo> {
        match &self.backend {
            Backend::Local(l) => l.get(id).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.get(id).await,
        }
    }

    /// All sandboxes, oldest first, brought up to date.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>> {
        match &self.backend {
            Backend::Local(l) => l.list().await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.list().await,
        }
    }

    /// Stops a running sandbox: SIGTERM to its processes, SIGKILL after `grace`. Returns as soon as
    /// everything is gone (immediately when the main command exits on SIGTERM). Stopping an ended sandbox
    /// is a no-op that returns its record.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        match &self.backend {
            Backend::Local(l) => l.stop(id, grace).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.stop(id, grace).await,
        }
    }

    /// Stops (if needed) and forgets a sandbox.
    pub async fn remove(&self, id: &str) -> Result<()> {
        match &self.backend {
            Backend::Local(l) => l.remove(id).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.remove(id).await,
        }
    }

    /// Changes a running sandbox's network policy. It takes effect at once for new connections and the next
    /// questions to its resolver (connections already open stay up). A sandbox made with loopback only cannot
    /// be given a network later.
    pub async fn set_network(&self, id: &str, policy: crate::NetworkPolicy) -> Result<SandboxInfo> {
        match &self.backend {
            Backend::Local(l) => l.set_network(id, policy).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(_) => Err(local_only("changing a sandbox's network")),
        }
    }

    /// Publishes port `port` of running sandbox `id` on the host's loopback (once: publishing it again gives
    /// the same address) and returns the address. A connection there reaches `127.0.0.1:PORT` inside the
    /// sandbox, whatever its network mode; the sandbox's own policy is not involved (nothing inside can use
    /// the published port to get out).
    pub async fn publish_port(&self, id: &str, port: u16) -> Result<std::net::SocketAddr> {
        match &self.backend {
            Backend::Local(l) => l.publish_port(id, port).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(_) => Err(local_only("publishing a port")),
        }
    }

    /// The running sandbox's published ports: (port inside, address on the host).
    pub async fn published_ports(&self, id: &str) -> Result<Vec<(u16, std::net::SocketAddr)>> {
        match &self.backend {
            Backend::Local(l) => l.published_ports(id).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.get(id).await.map(|_| vec![]),
        }
    }

    /// Removes the rules of sandboxes that are no longer running (an engine that crashed before cleaning up).
    /// Runs once per process: before its first network is made, or when a server starts.
    ///
    /// ```no_run
    /// # async fn demo(engine: std::sync::Arc<hangar_engine::Engine>) {
    /// engine.reconcile_networks().await;
    /// # }
    /// ```
    pub async fn reconcile_networks(&self) {
        match &self.backend {
            Backend::Local(l) => l.reconcile_networks().await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(_) => {}
        }
    }

    /// The main command's log of sandbox `id`, which ended: as kept by the backend.
    pub(crate) async fn kept_log(&self, id: &str, from: [u64; 2]) -> Result<crate::ExecStream> {
        match &self.backend {
            Backend::Local(l) => l.kept_log(id, from).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.kept_log(id, from).await,
        }
    }

    /// A connection to running sandbox `id`'s agent.
    pub(crate) async fn link(&self, id: &str) -> Result<AgentLink> {
        match &self.backend {
            Backend::Local(l) => l.connect(id).await,
            #[cfg(feature = "kubernetes")]
            Backend::Kubernetes(k) => k.connect(id).await,
        }
    }

    /// A plain connection to running sandbox `id`'s agent (for requests that carry no journal).
    pub(crate) async fn connect(&self, id: &str) -> Result<Conn> {
        Ok(self.link(id).await?.conn)
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

/// The engine's error for an agent's typed failure about `subject` (a path, a command, an exec).
pub(crate) fn agent_error(id: &str, subject: &str, kind: ErrorKind, message: String) -> Error {
    let file = |k| Error::File { id: id.to_string(), path: subject.to_string(), kind: k, message: message.clone() };
    match kind {
        ErrorKind::NotFound => file(FileErrorKind::NotFound),
        ErrorKind::PermissionDenied => file(FileErrorKind::PermissionDenied),
        ErrorKind::IsADirectory => file(FileErrorKind::IsADirectory),
        ErrorKind::NotARegularFile => file(FileErrorKind::NotARegularFile),
        ErrorKind::NotAllowed => file(FileErrorKind::NotAllowed),
        ErrorKind::NoSpace => file(FileErrorKind::NoSpace),
        ErrorKind::Changed => file(FileErrorKind::Changed),
        ErrorKind::CommandNotFound => Error::CommandNotFound { id: id.to_string(), message },
        ErrorKind::InvalidArgument => Error::InvalidArgument(message),
        ErrorKind::Stopping => Error::NotRunning { id: id.to_string(), state: SandboxState::Terminated },
        ErrorKind::Other => Error::Agent { id: id.to_string(), message },
        ErrorKind::ExecNotFound => Error::ExecNotFound { id: id.to_string(), exec: subject.to_string() },
        ErrorKind::ExecExpired => Error::ExecExpired { id: id.to_string(), exec: subject.to_string() },
        ErrorKind::ExecConflict => Error::InvalidArgument(message),
    }
}
