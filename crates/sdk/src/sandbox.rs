use crate::{Client, Exec, ExecInfo, NetworkPolicy, Result, SandboxInfo};
use hangar_types::SandboxConfig;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A running (or ended) sandbox. Dropping it does not stop it (like a Modal or E2B sandbox object): call
/// [`Sandbox::stop`], or use [`SandboxBuilder::run`] for a scope that always stops it.
///
/// ```no_run
/// # async fn demo() -> hangar::Result<()> {
/// let sb = hangar::Sandbox::builder().create().await?;
/// let r = sb.exec(["echo", "hi"]).await?;
/// assert_eq!(r.stdout, b"hi\n");
/// sb.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub(crate) id: String,
    pub(crate) client: Client,
}

/// Configures a new sandbox. Defaults: the built-in image, `sleep infinity`, no cpu or memory limit,
/// 4096 processes, a one-hour lifetime.
///
/// ```no_run
/// # async fn demo() -> hangar::Result<()> {
/// use std::time::Duration;
/// let sb = hangar::Sandbox::builder()
///     .image("builtin")
///     .command("sleep")
///     .args(["infinity"])
///     .env("MODEL", "tiny")
///     .tag("team", "research")
///     .cpu(1.0)
///     .memory_mb(512)
///     .max_lifetime(Duration::from_secs(600))
///     .create()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct SandboxBuilder {
    cfg: SandboxConfig,
    command: Option<String>,
    args: Vec<String>,
    client: Option<Client>,
}

impl SandboxBuilder {
    /// Image reference (`builtin` for now).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().image("builtin").create().await?;
    /// # Ok(()) }
    /// ```
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.cfg.image = image.into();
        self
    }
    /// The main command's program; the sandbox ends when it does, and its output is the sandbox's log
    /// ([`Sandbox::logs`]). Default: none — the sandbox has no main process and runs until it is stopped or
    /// its lifetime ends (see [`SandboxBuilder::image_command`] for the image's own command).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // The sandbox lives exactly as long as the server, so its state says whether the server is up.
    /// let sb = hangar::Sandbox::builder().command("python3").args(["-m", "http.server", "8000"]).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn command(mut self, program: impl Into<String>) -> Self {
        self.command = Some(program.into());
        self
    }
    /// The main command's arguments. Default `["infinity"]` when no command is set.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // Without a command the arguments go to `sleep`: this sandbox ends itself after five minutes.
    /// let sb = hangar::Sandbox::builder().args(["300"]).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
    /// Without a command, run the image's own entrypoint and cmd as the main command, as `docker run IMAGE`
    /// would (by default a sandbox without a command idles).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // An image whose command is a server: the sandbox lives as long as the server does.
    /// let sb = hangar::Sandbox::builder().image("registry.local/api:1.4").image_command().create().await?;
    /// # Ok(()) }
    /// ```
    pub fn image_command(mut self) -> Self {
        self.cfg.image_command = true;
        self
    }
    /// Sets an environment variable for every process in the sandbox.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // Every exec sees it, so no `.pyc` files end up among the files read back out.
    /// let sb = hangar::Sandbox::builder().env("PYTHONDONTWRITEBYTECODE", "1").create().await?;
    /// # Ok(()) }
    /// ```
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.cfg.env.push((key.into(), value.into()));
        self
    }
    /// Adds a label.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().tag("job", "nightly-eval").create().await?;
    /// assert_eq!(sb.info().await?.tags["job"], "nightly-eval");
    /// # Ok(()) }
    /// ```
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.cfg.tags.insert(key.into(), value.into());
        self
    }
    /// Default working directory for execs and relative file paths.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().workdir("/work").create().await?;
    /// sb.write_file("main.py", "print('hi')").await?;
    /// sb.exec(["python3", "main.py"]).check(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.cfg.workdir = Some(dir.into());
        self
    }
    /// CPU limit in cores (e.g. `0.5`).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // Half a core: a runaway loop cannot starve the other sandboxes on this host.
    /// let sb = hangar::Sandbox::builder().cpu(0.5).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn cpu(mut self, cores: f64) -> Self {
        self.cfg.cpus = Some(cores);
        self
    }
    /// Memory limit in MiB; a process that exceeds it is OOM-killed inside the sandbox.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().memory_mb(256).create().await?;
    /// let r = sb.exec(["python3", "-c", "b = bytearray(512 << 20)"]).await?;
    /// assert!(!r.success());
    /// # Ok(()) }
    /// ```
    pub fn memory_mb(mut self, mib: u64) -> Self {
        // An overflowing size stays too large (the engine refuses it) instead of wrapping to a small one.
        self.cfg.memory_bytes = Some(mib.saturating_mul(1 << 20));
        self
    }
    /// Memory limit in bytes, for sizes that are not whole MiB (`"500M"` of a Kubernetes quantity; see
    /// `hangar_types::quantity::bytes`).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().memory_bytes(500_000_000).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.cfg.memory_bytes = Some(bytes);
        self
    }
    /// Like [`SandboxBuilder::disk_mb`], in bytes.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().disk_bytes(5_000_000_000).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn disk_bytes(mut self, bytes: u64) -> Self {
        self.cfg.disk_bytes = Some(bytes);
        self
    }
    /// What the sandbox's writable layers may keep on disk, in MiB: at most, and by default, the engine's (or
    /// server's) disk budget (`HANGAR_DISK_BUDGET`); refused where there is none. A workload past it gets
    /// "Disk quota exceeded".
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().disk_mb(2048).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn disk_mb(mut self, mib: u64) -> Self {
        self.cfg.disk_bytes = Some(mib.saturating_mul(1 << 20));
        self
    }
    /// Limit on processes and threads (a fork bomb stops here).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// // Plenty for a test runner's worker pool, while a fork bomb in untrusted code stops at 64.
    /// let sb = hangar::Sandbox::builder().pids_limit(64).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn pids_limit(mut self, n: u64) -> Self {
        self.cfg.pids = Some(n);
        self
    }
    /// The sandbox is stopped after this long, whoever is watching.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// use std::time::Duration;
    /// // Should this program crash before stopping it, the sandbox still goes away within ten minutes.
    /// let sb = hangar::Sandbox::builder().max_lifetime(Duration::from_secs(600)).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.cfg.max_lifetime = d;
        self
    }
    /// Makes creation idempotent: retrying with the same id (for the same tenant) returns the sandbox the
    /// first attempt made instead of a second one — safe retries over a flaky network.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let a = hangar::Sandbox::builder().request_id("job-42-attempt").create().await?;
    /// let b = hangar::Sandbox::builder().request_id("job-42-attempt").create().await?;
    /// assert_eq!(a.id(), b.id());
    /// # Ok(()) }
    /// ```
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.cfg.request_id = Some(id.into());
        self
    }
    /// What the sandbox may reach on the network; without this, the engine's (or server's) default, which is
    /// loopback only unless `HANGAR_NETWORK=egress` is set there. See [`NetworkPolicy`] for the rules: with
    /// egress, private ranges, link-local addresses (cloud metadata), the host and other sandboxes stay
    /// unreachable unless an allow-list names them; names are enforced by address through the sandbox's own
    /// resolver.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// use hangar::NetworkPolicy;
    /// // The package index and nothing else: other names do not even resolve.
    /// let policy = NetworkPolicy::egress().allow("pypi.org").allow("files.pythonhosted.org");
    /// let sb = hangar::Sandbox::builder().image("python:3.11").network(policy).create().await?;
    /// sb.exec(["pip", "install", "requests"]).check(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn network(mut self, policy: NetworkPolicy) -> Self {
        self.cfg.network = Some(policy);
        self
    }
    /// Use this client instead of [`Client::from_env`].
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let server = hangar::Client::connect("http://hangar.internal:7777", None)?;
    /// let sb = hangar::Sandbox::builder().client(&server).create().await?;
    /// # Ok(()) }
    /// ```
    pub fn client(mut self, client: &Client) -> Self {
        self.client = Some(client.clone());
        self
    }

    /// Creates the sandbox and waits until it is running.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().memory_mb(512).create().await?;
    /// println!("created {}", sb.id());
    /// # Ok(()) }
    /// ```
    pub async fn create(mut self) -> Result<Sandbox> {
        let client = match self.client.take() {
            Some(c) => c,
            None => Client::from_env()?,
        };
        if let Some(program) = self.command.take() {
            self.cfg.command = std::iter::once(program).chain(std::mem::take(&mut self.args)).collect();
        } else if !self.args.is_empty() {
            self.cfg.command = std::iter::once("sleep".to_string()).chain(std::mem::take(&mut self.args)).collect();
        }
        let info = client.create(self.cfg).await?;
        Ok(Sandbox { id: info.id, client })
    }

    /// Creates the sandbox, runs `f` with it, and stops it afterwards — whether `f` returns, fails or
    /// panics (the panic is resumed after the stop).
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let out = hangar::Sandbox::builder()
    ///     .run(async |sb| sb.exec(["uname", "-n"]).await)
    ///     .await?;
    /// println!("ran on {}", out.stdout_text().trim());
    /// # Ok(()) }
    /// ```
    pub async fn run<F, T>(self, f: F) -> Result<T>
    where
        F: AsyncFnOnce(&Sandbox) -> Result<T>,
    {
        let sb = self.create().await?;
        let outcome = CatchUnwind(Box::pin(AssertUnwindSafe(f(&sb)))).await;
        let stopped = sb.stop().await;
        match outcome {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(Err(e)) => Err(e),
            Ok(Ok(v)) => stopped.map(|_| v),
        }
    }
}

/// Polls a future, turning a panic into an `Err` so cleanup can run before it is resumed.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<AssertUnwindSafe<F>> {
    type Output = std::thread::Result<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

impl Sandbox {
    /// Starts configuring a new sandbox.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let template = hangar::Sandbox::builder().cpu(2.0).memory_mb(4096);
    /// // Builders are `Clone`, so one template can make many alike sandboxes.
    /// let (a, b) = (template.clone().create().await?, template.create().await?);
    /// # Ok(()) }
    /// ```
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// A handle on an existing sandbox (any state) by id.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::from_id("sb-0123456789abcdef").await?;
    /// println!("{}", sb.info().await?.state);
    /// # Ok(()) }
    /// ```
    pub async fn from_id(id: &str) -> Result<Sandbox> {
        Self::from_id_with(&Client::from_env()?, id).await
    }

    /// Like [`Sandbox::from_id`] with an explicit client.
    ///
    /// ```no_run
    /// # async fn demo(client: &hangar::Client, id: &str) -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::from_id_with(client, id).await?;
    /// sb.exec(["python3", "collect_results.py"]).check(true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_id_with(client: &Client, id: &str) -> Result<Sandbox> {
        client.get(id).await?;
        Ok(Sandbox { id: id.to_string(), client: client.clone() })
    }

    /// A handle on a sandbox that `client` listed, without asking for it again (one call for a list of a
    /// thousand sandboxes, not a thousand and one). A sandbox removed since fails its calls with
    /// [`crate::Error::NotFound`], as any stale handle does.
    ///
    /// ```no_run
    /// # async fn demo(client: &hangar::Client) -> hangar::Result<()> {
    /// for info in client.list().await? {
    ///     if info.tags.get("job").map(String::as_str) == Some("nightly") && !info.state.is_final() {
    ///         hangar::Sandbox::from_info(client, &info).stop().await?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn from_info(client: &Client, info: &SandboxInfo) -> Sandbox {
        Sandbox { id: info.id.clone(), client: client.clone() }
    }

    /// All sandboxes of the default client, including ended ones.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// for info in hangar::Sandbox::list().await? {
    ///     println!("{} {:<10} {}", info.id, info.state, info.image);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list() -> Result<Vec<SandboxInfo>> {
        Client::from_env()?.list().await
    }

    /// The sandbox's id.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // Another process can pick the sandbox up again with `Sandbox::from_id`.
    /// println!("export SANDBOX_ID={}", sb.id());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox's current record (state, exit code, limits ...).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let info = sb.info().await?;
    /// if info.state.is_final() {
    ///     println!("ended: {:?} (exit code {:?})", info.end_reason, info.exit_code);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn info(&self) -> Result<SandboxInfo> {
        self.client.get(&self.id).await
    }

    /// Prepares a command; configure it with the [`Exec`] methods, then `.await` it.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let r = sb.exec(["python3", "-c", "print(6 * 7)"]).await?;
    /// assert_eq!(r.stdout_text().trim(), "42");
    /// # Ok(()) }
    /// ```
    pub fn exec<I, S>(&self, argv: I) -> Exec<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Exec::new(self, argv.into_iter().map(Into::into).collect())
    }

    /// Follows an exec started earlier (by this or any other client or process, e.g. `hangar exec
    /// --detach`): configure it like an [`Exec`] (callbacks, `stream_output`, `check`, `from_offsets`), then
    /// `.await` it for its result, or [`Exec::start`] it for a handle. Output is replayed from the journal,
    /// then followed live.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let r = sb.attach("train-42").stream_output(true).await?;
    /// println!("exit {}", r.returncode);
    /// # Ok(()) }
    /// ```
    pub fn attach(&self, exec_id: impl Into<String>) -> Exec<'_> {
        Exec::attach(self, exec_id.into())
    }

    /// The sandbox's log: its main command's output (stdout and stderr in the order written), while it runs
    /// and after it ended, until the sandbox is deleted. Configure what to read with the [`crate::Logs`]
    /// methods.
    ///
    /// ```no_run
    /// # async fn demo() -> hangar::Result<()> {
    /// let sb = hangar::Sandbox::builder().command("sh").args(["-c", "echo ready; sleep 1"]).create().await?;
    /// let log = sb.logs().follow(true).collect().await?;
    /// assert_eq!(log.text(), "ready\n");
    /// # Ok(()) }
    /// ```
    pub fn logs(&self) -> crate::Logs<'_> {
        crate::Logs::new(self)
    }

    /// The sandbox's execs, oldest first: running ones, and finished ones whose record is still kept.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// for x in sb.execs().await? {
    ///     println!("{} {:?} running={}", x.id, x.argv, x.end.is_none());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn execs(&self) -> Result<Vec<ExecInfo>> {
        self.client.execs(&self.id).await
    }

    /// Signals an exec's whole process tree by id (SIGKILL, 9, cancels it).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// sb.signal_exec("train-42", 2).await?; // SIGINT, like Ctrl-C
    /// # Ok(()) }
    /// ```
    pub async fn signal_exec(&self, exec_id: &str, signal: i32) -> Result<()> {
        self.client.signal_exec(&self.id, exec_id, signal).await
    }

    /// Reads a file from the sandbox. Relative paths are relative to its working directory; every path
    /// resolves inside the sandbox's own root, never on the host.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let hostname = sb.read_file("/etc/hostname").await;
    /// # Ok(()) }
    /// ```
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.client.read_file_to(&self.id, path, &mut data).await?;
        Ok(data)
    }

    /// Streams a file out of the sandbox into `sink` (a local file, a socket, ...) in chunks, so memory stays
    /// at a few hundred KiB whatever the size; returns its length. The same rules as [`Sandbox::read_file`]
    /// apply, and the engine's (or server's) transfer limit (16 GiB unless `HANGAR_MAX_FILE_BYTES` says
    /// otherwise).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut out = tokio::fs::File::create("checkpoint.pt").await.unwrap();
    /// let n = sb.read_file_to("/work/checkpoint.pt", &mut out).await?;
    /// println!("{n} bytes");
    /// # Ok(()) }
    /// ```
    pub async fn read_file_to(
        &self,
        path: &str,
        sink: &mut (impl tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64> {
        self.client.read_file_to(&self.id, path, sink).await
    }

    /// Streams `len` bytes from `source` into a file in the sandbox (created with mode 0644 and its parent
    /// directories when missing), in chunks. A source that ends early fails the write with
    /// [`crate::Error::LocalIo`].
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut data = tokio::fs::File::open("dataset.tar").await.unwrap();
    /// let len = data.metadata().await.unwrap().len();
    /// sb.write_file_from("/work/dataset.tar", &mut data, len).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_file_from(
        &self,
        path: &str,
        source: &mut (impl tokio::io::AsyncRead + Unpin + Send),
        len: u64,
    ) -> Result<()> {
        self.client.write_file_from(&self.id, path, source, len, 0o644).await
    }

    /// Writes a file into the sandbox (mode 0644, parent directories created).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// sb.write_file("/work/data.csv", "a,b\n1,2\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_file(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        let data = data.as_ref();
        self.client.write_file_from(&self.id, path, &mut &data[..], data.len() as u64, 0o644).await
    }

    /// Replaces the sandbox's network policy while it runs (its mode stays what it was made with). New
    /// connections, and the next questions to its resolver, follow it at once; open connections stay up.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use hangar::NetworkPolicy;
    /// // Dependencies are installed: from now on the sandbox reaches nothing but the internal API.
    /// sb.set_network(NetworkPolicy::egress().allow("10.20.0.0/16")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_network(&self, policy: NetworkPolicy) -> Result<SandboxInfo> {
        self.client.set_network(&self.id, policy).await
    }

    /// Publishes port `port` of the sandbox and returns where to connect on this machine: a connection
    /// there reaches `127.0.0.1:PORT` inside the sandbox (so a server bound to its loopback or to all its
    /// addresses is reached), whatever its network mode. With the embedded engine the address is on the host's
    /// 127.0.0.1 and stays until the sandbox ends; through a server it is a tunnel from this process's
    /// 127.0.0.1, over the server's authenticated API, open while this process runs. Publishing a port again
    /// gives a working address again (the same one, embedded).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// sb.exec(["python3", "-m", "http.server", "8000"]).id("web").start().await?;
    /// let at = sb.publish_port(8000).await?;
    /// println!("open http://{at}/");
    /// # Ok(()) }
    /// ```
    pub async fn publish_port(&self, port: u16) -> Result<std::net::SocketAddr> {
        self.client.publish_port(&self.id, port).await
    }

    /// Stops the sandbox with the default 10 s grace: SIGTERM to its processes, SIGKILL after the grace.
    /// Returns as soon as everything is gone. Stopping an ended sandbox is a no-op.
    ///
    /// ```no_run
    /// # async fn demo(sb: hangar::Sandbox) -> hangar::Result<()> {
    /// let info = sb.stop().await?;
    /// assert!(info.state.is_final());
    /// # Ok(()) }
    /// ```
    pub async fn stop(&self) -> Result<SandboxInfo> {
        self.stop_with_grace(hangar_types::DEFAULT_STOP_GRACE).await
    }

    /// Stops the sandbox with an explicit grace period.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use std::time::Duration;
    /// // The training script checkpoints on SIGTERM; a minute lets it finish before SIGKILL.
    /// sb.stop_with_grace(Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn stop_with_grace(&self, grace: Duration) -> Result<SandboxInfo> {
        self.client.stop(&self.id, grace).await
    }

    /// Stops (if needed) and forgets the sandbox: it no longer appears in [`Sandbox::list`].
    ///
    /// ```no_run
    /// # async fn demo(sb: hangar::Sandbox) -> hangar::Result<()> {
    /// let report = sb.read_file("/work/report.json").await?;
    /// // Read first: deleting also removes the sandbox's files.
    /// sb.delete().await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(self) -> Result<()> {
        self.client.remove(&self.id).await
    }
}
