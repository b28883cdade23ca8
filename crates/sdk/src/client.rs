use crate::handle::{ExecHandle, Inner};
use crate::remote::Remote;
use crate::{Result, SandboxInfo};
#[cfg(feature = "embedded")]
use hangar_engine::{Engine, EngineConfig, ExecStream};
use hangar_types::{ExecInfo, ExecSpec, NetworkPolicy, SandboxConfig};
#[cfg(feature = "embedded")]
use std::path::PathBuf;
#[cfg(feature = "embedded")]
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

/// A connection to where sandboxes run: a Hangar server (`HANGAR_URL`, `HANGAR_TOKEN`) over one HTTP/2
/// channel shared by every call, or, without an address, the embedded engine on this machine. Sandbox code
/// behaves the same with either. Cheap to clone; share one per process.
///
/// ```no_run
/// # fn demo() -> hangar::Result<()> {
/// // The default: HANGAR_URL if set, else the embedded engine in $HANGAR_STATE_DIR or /var/lib/hangar.
/// let client = hangar::Client::from_env()?;
/// // A state directory of your own (tests do this).
/// let isolated = hangar::Client::embedded("/tmp/my-hangar")?;
/// // A server.
/// let remote = hangar::Client::connect("http://127.0.0.1:7777", Some("secret-token"))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    #[cfg(feature = "embedded")]
    Embedded(Arc<Engine>),
    Remote(Box<Remote>),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            #[cfg(feature = "embedded")]
            Backend::Embedded(e) => f.debug_struct("Client").field("state_dir", &e.config().state_dir).finish(),
            Backend::Remote(r) => f.debug_struct("Client").field("url", &r.url).finish(),
        }
    }
}

/// Where a reader of an exec starts: at offsets (stdout, stderr), moved to the last `tail_lines` lines, then
/// to the first bytes written at or after `since_ms` (Unix milliseconds).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Start {
    pub(crate) from: [u64; 2],
    pub(crate) tail_lines: Option<u64>,
    pub(crate) since_ms: Option<u64>,
}

static DEFAULT: OnceLock<Client> = OnceLock::new();

/// Runs the same call on whichever backend the client has, mapping embedded errors on the way out.
macro_rules! dispatch {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match &$self.backend {
            #[cfg(feature = "embedded")]
            Backend::Embedded(e) => Ok(e.$method($($arg),*).await?),
            Backend::Remote(r) => r.$method($($arg),*).await,
        }
    };
}

impl Client {
    /// The process-wide default client, configured from the environment on first use: a server when
    /// `HANGAR_URL` is set (with `HANGAR_TOKEN`), the embedded engine otherwise.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let client = hangar::Client::from_env()?;
    /// println!("{} sandboxes", client.list().await?.len());
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Client> {
        if let Some(c) = DEFAULT.get() {
            return Ok(c.clone());
        }
        let client = match std::env::var("HANGAR_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => Self::connect(&url, std::env::var("HANGAR_TOKEN").ok().as_deref())?,
            #[cfg(feature = "embedded")]
            None => Self::with_config(EngineConfig::from_env()?)?,
            #[cfg(not(feature = "embedded"))]
            None => {
                return Err(crate::Error::InvalidArgument(
                    "HANGAR_URL is not set, and this build of the SDK has no embedded engine (feature `embedded`)"
                        .into(),
                ));
            }
        };
        Ok(DEFAULT.get_or_init(|| client).clone())
    }

    /// An embedded engine keeping its state in `state_dir`.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // A state directory of its own keeps test sandboxes out of the machine-wide list.
    /// let client = hangar::Client::embedded(std::env::temp_dir().join("hangar-tests"))?;
    /// let sb = hangar::Sandbox::builder().client(&client).create().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "embedded")]
    pub fn embedded(state_dir: impl Into<PathBuf>) -> Result<Client> {
        let mut cfg = EngineConfig::from_env()?;
        cfg.state_dir = state_dir.into();
        Self::with_config(cfg)
    }

    /// An embedded engine with an explicit configuration.
    ///
    /// ```no_run
    /// # fn demo() -> hangar::Result<()> {
    /// let mut cfg = hangar::EngineConfig::from_env()?;
    /// cfg.agent_bin = "/opt/hangar/bin/hangar-agent".into();
    /// let client = hangar::Client::with_config(cfg)?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "embedded")]
    pub fn with_config(cfg: EngineConfig) -> Result<Client> {
        Ok(Client { backend: Backend::Embedded(Engine::open(cfg)?) })
    }

    /// A server at `url` (`http://host:port`, or `unix:/path/to/socket` for a server on this machine that
    /// listens there too: `hangar serve --socket`), authenticating with `token`. Connects lazily: an
    /// unreachable server shows up as [`crate::Error::Connection`] on the first call.
    ///
    /// ```no_run
    /// # fn demo() -> hangar::Result<()> {
    /// let token = std::env::var("HANGAR_TOKEN").ok();
    /// let client = hangar::Client::connect("http://hangar.internal:7777", token.as_deref())?;
    /// # Ok(()) }
    /// ```
    pub fn connect(url: &str, token: Option<&str>) -> Result<Client> {
        Ok(Client { backend: Backend::Remote(Box::new(Remote::connect(url, token)?)) })
    }

    /// Whether this client talks to a server (else it is the embedded engine).
    ///
    /// ```no_run
    /// # fn demo() -> hangar::Result<()> {
    /// let client = hangar::Client::connect("http://hangar.internal:7777", None)?;
    /// assert!(client.is_remote());
    /// # Ok(()) }
    /// ```
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Remote(_))
    }

    /// All sandboxes known to this client, oldest first, including ended ones.
    ///
    /// ```no_run
    /// # async fn demo(client: &hangar::Client) -> hangar::Result<()> {
    /// for info in client.list().await?.iter().filter(|i| !i.state.is_final()) {
    ///     println!("{} {} {:?}", info.id, info.image, info.tags);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list(&self) -> Result<Vec<SandboxInfo>> {
        dispatch!(self, list())
    }

    pub(crate) async fn create(&self, cfg: SandboxConfig) -> Result<SandboxInfo> {
        dispatch!(self, create(cfg))
    }

    pub(crate) async fn get(&self, id: &str) -> Result<SandboxInfo> {
        dispatch!(self, get(id))
    }

    pub(crate) async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        dispatch!(self, stop(id, grace))
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<()> {
        dispatch!(self, remove(id))
    }

    pub(crate) async fn publish_port(&self, id: &str, port: u16) -> Result<std::net::SocketAddr> {
        dispatch!(self, publish_port(id, port))
    }

    pub(crate) async fn set_network(&self, id: &str, policy: NetworkPolicy) -> Result<SandboxInfo> {
        dispatch!(self, set_network(id, policy))
    }

    pub(crate) async fn read_file_to(
        &self,
        id: &str,
        path: &str,
        sink: &mut (impl tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64> {
        match &self.backend {
            #[cfg(feature = "embedded")]
            Backend::Embedded(e) => {
                use tokio::io::AsyncWriteExt;
                let mut f = e.open_file(id, path).await?;
                while let Some(chunk) = f.next_chunk().await? {
                    sink.write_all(&chunk).await.map_err(|e| local(path, e))?;
                }
                sink.flush().await.map_err(|e| local(path, e))?;
                Ok(f.len())
            }
            Backend::Remote(r) => r.read_file_to(id, path, sink).await,
        }
    }

    pub(crate) async fn write_file_from(
        &self,
        id: &str,
        path: &str,
        source: &mut (impl tokio::io::AsyncRead + Unpin + Send),
        len: u64,
        mode: u32,
    ) -> Result<()> {
        dispatch!(self, write_file_from(id, path, len, mode, source))
    }

    pub(crate) async fn exec(
        &self,
        id: &str,
        spec: ExecSpec,
        input: Option<Vec<u8>>,
        keepalive: Option<Duration>,
    ) -> Result<ExecHandle> {
        let command = spec.argv.clone();
        match &self.backend {
            #[cfg(feature = "embedded")]
            Backend::Embedded(e) => {
                let stream = match input {
                    Some(data) => e.exec_with_input(id, spec, data).await?,
                    None => e.exec(id, spec).await?,
                };
                Ok(self.embedded_handle(id, stream, [0, 0]))
            }
            Backend::Remote(r) => {
                let x = r.exec(id, spec, input, keepalive).await?;
                Ok(ExecHandle::new(self.clone(), id, command, Inner::Remote(x), [0, 0]))
            }
        }
    }

    /// Follows exec `exec` from where `start` says.
    pub(crate) async fn attach(
        &self,
        id: &str,
        exec: &str,
        start: Start,
        keepalive: Option<Duration>,
    ) -> Result<ExecHandle> {
        match &self.backend {
            #[cfg(feature = "embedded")]
            Backend::Embedded(e) => {
                let mut stream = e.attach(id, exec, start.from).await?;
                if let Some(lines) = start.tail_lines {
                    stream.seek_tail(lines).await?;
                }
                if let Some(ms) = start.since_ms {
                    stream.seek_since(ms).await?;
                }
                let from = stream.position();
                Ok(self.embedded_handle(id, stream, from))
            }
            Backend::Remote(r) => {
                // The main command is no exec in the list: its command is the sandbox's.
                let command = match exec == hangar_types::MAIN_EXEC {
                    true => r.get(id).await?.command,
                    false => r.execs(id).await?.into_iter().find(|x| x.id == exec).map(|x| x.argv).unwrap_or_default(),
                };
                let x = r.attach(id, exec, &start, keepalive).await?;
                let from = x.start;
                Ok(ExecHandle::new(self.clone(), id, command, Inner::Remote(x), from))
            }
        }
    }

    #[cfg(feature = "embedded")]
    fn embedded_handle(&self, id: &str, stream: ExecStream, from: [u64; 2]) -> ExecHandle {
        let command = stream.info().argv.clone();
        ExecHandle::new(self.clone(), id, command, Inner::Embedded(Box::new(stream)), from)
    }

    #[cfg(feature = "embedded")]
    pub(crate) fn engine(&self) -> Option<&Arc<Engine>> {
        match &self.backend {
            Backend::Embedded(e) => Some(e),
            Backend::Remote(_) => None,
        }
    }

    pub(crate) async fn execs(&self, id: &str) -> Result<Vec<ExecInfo>> {
        dispatch!(self, execs(id))
    }

    pub(crate) async fn signal_exec(&self, id: &str, exec: &str, signal: i32) -> Result<()> {
        dispatch!(self, signal_exec(id, exec, signal))
    }
}

/// A failure of the caller's own reader or writer during a transfer of `path`.
pub(crate) fn local(path: &str, e: std::io::Error) -> crate::Error {
    crate::Error::LocalIo(format!("transferring {path}: {e}"))
}

#[cfg(all(test, not(feature = "embedded")))]
mod tests {
    /// A client-only build has no engine to fall back to: without `HANGAR_URL` it says so, by name.
    #[test]
    fn a_remote_only_build_asks_for_a_server() {
        if std::env::var_os("HANGAR_URL").is_some() {
            return; // a server is configured: the default client is a remote one, as it should be
        }
        match super::Client::from_env() {
            Err(crate::Error::InvalidArgument(m)) => assert!(m.contains("HANGAR_URL") && m.contains("embedded"), "{m}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        let remote = super::Client::connect("http://127.0.0.1:1", None).unwrap();
        assert!(format!("{remote:?}").contains("127.0.0.1:1"));
    }
}
