//! `hangar`: the command line. A thin user of the SDK: argument parsing, printing, exit codes.

mod bench;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hangar::{Client, Ending, ExecEvent, ExecHandle, OnDisconnect, OutputStream, Sandbox, SandboxBuilder};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for failures of hangar itself (not of the command), as docker uses.
const HANGAR_FAILED: u8 = 125;
/// Exit code when standard output was closed by its reader (`hangar ls | head`): 128 + SIGPIPE, as a shell
/// reports for any filter that SIGPIPE ended.
const STDOUT_CLOSED: u8 = 128 + libc::SIGPIPE as u8;

/// Standard output was closed by its reader: Hangar stops quietly, like any Unix filter.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Classifies a failed write to standard output.
fn stdout_error(e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => StdoutClosed.into(),
        _ => anyhow::Error::new(e).context("write to standard output"),
    }
}

/// `println!` that returns [`StdoutClosed`] (or another write error) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err(crate::stdout_error)?
    }};
}
pub(crate) use outln;
/// Default lifetime of the sandbox behind `hangar run` when no timeout is given.
const RUN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Parser)]
#[command(name = "hangar", version, about = "Isolated, disposable sandboxes with live output streaming")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a sandbox, run one command in it with live output, stop it; exits with the command's code.
    Run {
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Kill the command (and everything it started) after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Working directory for the command.
        #[arg(long)]
        cwd: Option<String>,
        /// The command and its arguments (no shell).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create a sandbox that keeps running (default main command `sleep infinity`); prints its id.
    Create {
        #[command(flatten)]
        sandbox: SandboxArgs,
        /// Label, KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = key_value)]
        tags: Vec<(String, String)>,
        /// Main command (default `sleep infinity`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a command in a running sandbox with live output; exits with the command's code.
    Exec {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        exec: ExecArgs,
        /// Start the command, print its exec id and return; it keeps running (see `hangar attach`).
        #[arg(long, short = 'd')]
        detach: bool,
        /// Forward this process's stdin to the command (its end of file too).
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Run under a pseudo-terminal (with -i on a terminal: raw mode and resizes, like `hangar shell`).
        #[arg(long, short = 't')]
        tty: bool,
        /// stdout and stderr on one pipe, so their order is exact (all output on stdout).
        #[arg(long)]
        merged: bool,
        /// Keep the command running when this client goes away (default: it is killed).
        #[arg(long)]
        keep_running: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Follow an exec (started with `exec -d`, or by any client): replay its output from the given offsets,
    /// then live; exits with the command's code.
    Attach {
        /// Sandbox id.
        id: String,
        /// Exec id.
        exec: String,
        /// Start at this stdout byte offset.
        #[arg(long, default_value_t = 0)]
        stdout_offset: u64,
        /// Start at this stderr byte offset.
        #[arg(long, default_value_t = 0)]
        stderr_offset: u64,
        /// Forward this process's stdin to the command.
        #[arg(long, short = 'i')]
        interactive: bool,
    },
    /// List a sandbox's execs: running ones, and ended ones whose record is kept.
    Execs {
        /// Sandbox id.
        id: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Signal an exec's whole process tree (default SIGKILL, which cancels it).
    Kill {
        /// Sandbox id.
        id: String,
        /// Exec id.
        exec: String,
        /// Signal number.
        #[arg(long, short = 's', default_value_t = 9)]
        signal: i32,
    },
    /// An interactive terminal in a sandbox (default: bash if it has one, else sh).
    Shell {
        /// Sandbox id.
        id: String,
        /// Command instead of the shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List sandboxes, including ended ones with how they ended.
    Ls {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sandboxes: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Grace period in seconds.
        #[arg(long, default_value_t = 10.0)]
        grace: f64,
    },
    /// Stop (if running) and remove sandboxes.
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Copy a file into or out of a sandbox: `hangar cp ./a ID:/path` or `hangar cp ID:/path ./a`.
    Cp {
        /// Source: a local path or ID:PATH.
        src: String,
        /// Destination: a local path or ID:PATH.
        dst: String,
    },
    /// Manage local images: import archives, list, remove (on this machine's engine).
    #[command(subcommand)]
    Images(ImagesCmd),
    /// Serve the gRPC API (hangar.v1) over the local engine until SIGTERM or Ctrl-C.
    Serve {
        /// Address for gRPC.
        #[arg(long, default_value = "127.0.0.1:7777")]
        listen: std::net::SocketAddr,
        /// Address for the HTTP health (`/healthz`) and Prometheus metrics (`/metrics`) endpoints.
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// File of TENANT=TOKEN lines; or set HANGAR_SERVER_TOKENS="tenant=token,...".
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        /// On shutdown, how long in-flight calls may finish before they are cancelled (seconds).
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
    },
    /// Measure sandbox create, exec round trip, first-byte latency and streaming throughput against raw baselines.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Pull an image from its registry (or a configured mirror): progress per layer, digest at the end.
    Pull {
        /// Reference, e.g. python:3.11 or 127.0.0.1:5000/team/app:1.
        reference: String,
    },
    /// Import a `docker save` archive or an OCI image layout archive (for air-gapped machines).
    Import {
        /// The archive (tar, optionally gzip).
        archive: std::path::PathBuf,
    },
    /// List imported images.
    Ls,
    /// Remove layers no image references and no running sandbox uses.
    Prune,
    /// Forget an image reference.
    Rm {
        /// References, e.g. busybox:latest.
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Args)]
struct ExecArgs {
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Give the exec this id: running the same id again finds that exec instead of starting a second one.
    #[arg(long = "exec-id")]
    exec_id: Option<String>,
}

#[derive(Args)]
struct SandboxArgs {
    /// Image (default: the built-in host-userland image).
    #[arg(long, default_value = "builtin")]
    image: String,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// CPU limit in cores.
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory limit in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// Disk budget of the writable layers in MiB (at most the engine's or server's `HANGAR_DISK_BUDGET`).
    #[arg(long)]
    disk: Option<u64>,
    /// Maximum lifetime in seconds.
    #[arg(long)]
    lifetime: Option<f64>,
}

impl SandboxArgs {
    fn builder(self) -> Result<SandboxBuilder> {
        let mut b = Sandbox::builder().image(self.image);
        for (k, v) in self.env {
            b = b.env(k, v);
        }
        if let Some(c) = self.cpu {
            b = b.cpu(c);
        }
        if let Some(m) = self.memory {
            b = b.memory_mb(m);
        }
        if let Some(d) = self.disk {
            b = b.disk_mb(d);
        }
        if let Some(l) = self.lifetime {
            b = b.max_lifetime(seconds(l, "--lifetime")?);
        }
        Ok(b)
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn seconds(s: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow!("{flag} {s}: must be a positive number of seconds"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs its requests by default; other commands stay quiet unless HANGAR_LOG asks.
    let default = if matches!(cli.cmd, Cmd::Serve { .. }) { "info" } else { "error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANGAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hangar: cannot start runtime: {e}");
            return ExitCode::from(HANGAR_FAILED);
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is::<StdoutClosed>() => ExitCode::from(STDOUT_CLOSED),
        Err(e) => {
            eprintln!("hangar: {e:#}");
            ExitCode::from(HANGAR_FAILED)
        }
    }
}

/// Prints one JSON object per line.
fn json_lines<T: serde::Serialize>(items: &[T]) -> Result<u8> {
    for i in items {
        outln!("{}", serde_json::to_string(i)?);
    }
    Ok(0)
}

async fn dispatch(cmd: Cmd) -> Result<u8> {
    match cmd {
        Cmd::Run { mut sandbox, timeout, cwd, command } => {
            let timeout = timeout.map(|t| seconds(t, "--timeout")).transpose()?;
            // `run` stops its sandbox itself; the lifetime is only a safety net should this process die, so
            // it must not cut a long command short: a day, or the timeout plus a minute.
            if sandbox.lifetime.is_none() {
                let net = timeout.map_or(RUN_LIFETIME, |t| t + Duration::from_secs(60));
                sandbox.lifetime = Some(net.as_secs_f64());
            }
            let sb = sandbox.builder()?.create().await?;
            let ran = tokio::select! {
                r = run_streaming(&sb, command, cwd, timeout) => r,
                _ = tokio::signal::ctrl_c() => Ok(130),
            };
            sb.stop_with_grace(Duration::from_secs(1)).await?;
            ran
        }
        Cmd::Create { sandbox, tags, command } => {
            let mut b = sandbox.builder()?;
            for (k, v) in tags {
                b = b.tag(k, v);
            }
            if let Some((program, args)) = command.split_first() {
                b = b.command(program.clone()).args(args.iter().cloned());
            }
            outln!("{}", b.create().await?.id());
            Ok(0)
        }
        Cmd::Exec { id, exec, detach, interactive, tty, merged, keep_running, command } => {
            let sb = Sandbox::from_id(&id).await?;
            let timeout = exec.timeout.map(|t| seconds(t, "--timeout")).transpose()?;
            let mut x = sb.exec(command).merged(merged);
            if let Some(c) = exec.cwd {
                x = x.cwd(c);
            }
            for (k, v) in exec.env {
                x = x.env(k, v);
            }
            if let Some(t) = timeout {
                x = x.timeout(t);
            }
            if let Some(i) = exec.exec_id {
                x = x.id(i);
            }
            if interactive {
                x = x.open_stdin();
            }
            let raw = tty && interactive && terminal::is_terminal();
            if tty {
                let (rows, cols) = terminal::size();
                x = x.tty(rows, cols);
            }
            // This client is the command's only watcher unless it detaches or asks to keep it.
            if !(detach || keep_running) {
                x = x.on_disconnect(OnDisconnect::Kill { grace_ms: 0 });
            }
            let h = x.start().await?;
            if detach {
                outln!("{}", h.id());
                return Ok(0);
            }
            follow(h, interactive, raw, timeout).await
        }
        Cmd::Attach { id, exec, stdout_offset, stderr_offset, interactive } => {
            let sb = Sandbox::from_id(&id).await?;
            let h = sb.attach(exec).from_offsets(stdout_offset, stderr_offset).start().await?;
            follow(h, interactive, false, None).await
        }
        Cmd::Execs { id, json } => {
            let execs = Sandbox::from_id(&id).await?.execs().await?;
            if json {
                return json_lines(&execs);
            }
            outln!("{:<24} {:<10} {:<14} {:>12} {:>12}  COMMAND", "EXEC", "STATE", "ENDING", "STDOUT", "STDERR");
            for x in execs {
                let (state, ending) = match &x.end {
                    None => ("running", "-".to_string()),
                    Some(e) => ("ended", e.ending.to_string()),
                };
                let state = if x.expired { "expired" } else { state };
                outln!(
                    "{:<24} {:<10} {:<14} {:>12} {:>12}  {}",
                    x.id,
                    state,
                    ending,
                    x.written[0],
                    x.written[1],
                    x.argv.join(" ")
                );
            }
            Ok(0)
        }
        Cmd::Kill { id, exec, signal } => {
            Sandbox::from_id(&id).await?.signal_exec(&exec, signal).await?;
            Ok(0)
        }
        Cmd::Shell { id, mut command } => {
            let sb = Sandbox::from_id(&id).await?;
            if command.is_empty() {
                command = ["sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"]
                    .map(String::from)
                    .to_vec();
            }
            let (rows, cols) = terminal::size();
            let h = sb
                .exec(command)
                .tty(rows, cols)
                .open_stdin()
                .on_disconnect(OnDisconnect::Kill { grace_ms: 0 })
                .start()
                .await?;
            follow(h, true, terminal::is_terminal(), None).await
        }
        Cmd::Ls { json } => {
            let all = Client::from_env()?.list().await?;
            if json {
                return json_lines(&all);
            }
            outln!("{:<20} {:<11} {:<8} {:<6} {:<18} COMMAND", "ID", "STATE", "IMAGE", "EXIT", "ENDED BY");
            for i in all {
                let exit = match (i.exit_code, i.exit_signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(s)) => format!("sig{s}"),
                    _ => "-".into(),
                };
                let ended = i.end_reason.as_deref().unwrap_or("-");
                outln!("{:<20} {:<11} {:<8} {:<6} {:<18} {}", i.id, i.state, i.image, exit, ended, i.command.join(" "));
            }
            Ok(0)
        }
        Cmd::Stop { ids, grace } => {
            let grace =
                Duration::try_from_secs_f64(grace).map_err(|_| anyhow!("--grace {grace}: not a number of seconds"))?;
            for id in ids {
                let info = Sandbox::from_id(&id).await?.stop_with_grace(grace).await?;
                outln!("{id} {}", info.state);
            }
            Ok(0)
        }
        Cmd::Rm { ids } => {
            for id in ids {
                Sandbox::from_id(&id).await?.delete().await?;
                outln!("{id}");
            }
            Ok(0)
        }
        Cmd::Cp { src, dst } => copy(&src, &dst).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Images(cmd) => images(cmd).await,
        Cmd::Serve { listen, http_listen, token_file, drain } => serve(listen, http_listen, token_file, drain).await,
    }
}

async fn run_streaming(
    sb: &Sandbox,
    command: Vec<String>,
    cwd: Option<String>,
    timeout: Option<Duration>,
) -> Result<u8> {
    let mut exec = sb.exec(command).on_disconnect(OnDisconnect::Kill { grace_ms: 0 });
    if let Some(c) = cwd {
        exec = exec.cwd(c);
    }
    if let Some(t) = timeout {
        exec = exec.timeout(t);
    }
    follow(exec.start().await?, false, false, timeout).await
}

/// Prints an exec's output as it arrives (stdout to stdout, stderr to stderr), optionally feeding it this
/// process's stdin (raw terminal and resizes for a PTY), and returns the exit code a shell would give.
async fn follow(mut h: ExecHandle, stdin: bool, raw: bool, timeout: Option<Duration>) -> Result<u8> {
    use std::io::Write;
    let _raw = raw.then(terminal::RawMode::enter).transpose()?;
    let mut feeding = Vec::new();
    if stdin {
        let input = h.input();
        feeding.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.write(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = input.close().await;
        }));
    }
    if raw {
        let input = h.input();
        feeding.push(tokio::spawn(async move {
            let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                let (rows, cols) = terminal::size();
                let _ = input.resize(rows, cols).await;
            }
        }));
    }
    let _stop_feeding = scopeguard(feeding);
    loop {
        match h.next_event().await? {
            Some(ExecEvent::Output { stream: OutputStream::Stdout, data, .. }) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&data).and_then(|()| out.flush()).map_err(stdout_error)?;
            }
            Some(ExecEvent::Output { data, .. }) => std::io::stderr().lock().write_all(&data)?,
            Some(ExecEvent::Gap { stream, from, to }) => {
                eprintln!(
                    "hangar: {stream:?} bytes {from}..{to} were dropped by the journal cap before this client attached"
                )
            }
            Some(ExecEvent::Exit(end)) => {
                drop(_raw);
                return match &end.ending {
                    Ending::Exited { .. } | Ending::Signaled { .. } => Ok(end.shell_code()),
                    Ending::TimedOut => {
                        let after = timeout.map(|t| format!(" after {t:?}")).unwrap_or_default();
                        eprintln!("hangar: command timed out{after}; its processes were killed");
                        Ok(124)
                    }
                    Ending::Cancelled => {
                        eprintln!("hangar: command cancelled; its processes were killed");
                        Ok(end.shell_code())
                    }
                    Ending::OomKilled => {
                        eprintln!("hangar: command killed by the OOM killer (sandbox memory limit)");
                        Ok(end.shell_code())
                    }
                    Ending::FailedToStart(f) => bail!("{}", f.message),
                    Ending::SandboxGone => bail!("sandbox {}: it ended while exec {} ran", h.sandbox_id(), h.id()),
                };
            }
            None => bail!("exec {}: the stream ended without an exit", h.id()),
        }
    }
}

/// Aborts the given tasks when dropped.
fn scopeguard(tasks: Vec<tokio::task::JoinHandle<()>>) -> impl Drop {
    struct Abort(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.iter().for_each(|t| t.abort());
        }
    }
    Abort(tasks)
}

mod terminal {
    //! The controlling terminal: size, and raw mode for interactive sessions.
    use std::io::IsTerminal;

    nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

    pub fn is_terminal() -> bool {
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    }

    /// Rows and columns of this process's terminal; 24×80 when there is none.
    pub fn size() -> (u16, u16) {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which lives across the call.
        match unsafe { tiocgwinsz(libc::STDOUT_FILENO, &mut ws) } {
            Ok(_) if ws.ws_row > 0 && ws.ws_col > 0 => (ws.ws_row, ws.ws_col),
            _ => (24, 80),
        }
    }

    /// The terminal in raw mode (keys go to the sandbox as typed, ^C included) until dropped.
    pub struct RawMode(nix::sys::termios::Termios);

    impl RawMode {
        pub fn enter() -> anyhow::Result<Self> {
            use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
            let saved = tcgetattr(std::io::stdin())?;
            let mut raw = saved.clone();
            cfmakeraw(&mut raw);
            tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw)?;
            Ok(Self(saved))
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.0);
        }
    }
}

/// `ID:PATH` → (id, path); anything else is a local path.
fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.starts_with("sb-") && !path.is_empty()).then_some((id, path))
}

async fn copy(src: &str, dst: &str) -> Result<u8> {
    match (remote(src), remote(dst)) {
        // Both ways streamed in chunks: memory stays small whatever the file's size.
        (Some((id, path)), None) => {
            let sb = Sandbox::from_id(id).await?;
            let mut out = tokio::fs::File::create(dst).await.with_context(|| format!("create {dst}"))?;
            if let Err(e) = sb.read_file_to(path, &mut out).await {
                // No partial file is left to be mistaken for the whole (only a regular file: `dst` may be
                // /dev/null or a FIFO).
                if tokio::fs::metadata(dst).await.is_ok_and(|m| m.is_file()) {
                    let _ = tokio::fs::remove_file(dst).await;
                }
                return Err(e.into());
            }
        }
        (None, Some((id, path))) => {
            let mut file = tokio::fs::File::open(src).await.with_context(|| format!("open {src}"))?;
            let meta = file.metadata().await.with_context(|| format!("stat {src}"))?;
            if !meta.is_file() {
                bail!("{src} is not a regular file");
            }
            Sandbox::from_id(id).await?.write_file_from(path, &mut file, meta.len()).await?;
        }
        (Some(_), Some(_)) => {
            bail!("copying between two sandboxes is not supported: copy through a local file")
        }
        (None, None) => bail!("one of {src:?} and {dst:?} must be SANDBOX_ID:PATH"),
    }
    Ok(0)
}

async fn serve(
    listen: std::net::SocketAddr,
    http_listen: Option<std::net::SocketAddr>,
    token_file: Option<std::path::PathBuf>,
    drain: f64,
) -> Result<u8> {
    let tokens = match (token_file, std::env::var("HANGAR_SERVER_TOKENS")) {
        (Some(path), _) => hangar_server::Tokens::from_file(&path)?,
        (None, Ok(list)) => hangar_server::Tokens::parse(&list)?,
        (None, Err(_)) => bail!("no tokens: pass --token-file FILE (TENANT=TOKEN lines) or set HANGAR_SERVER_TOKENS"),
    };
    let drain = seconds(drain, "--drain")?;
    let engine = hangar_engine::Engine::open(hangar_engine::EngineConfig::from_env()?)?;
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let (grpc, http, serving) = hangar_server::bind(engine, tokens, listen, http_listen, drain, shutdown).await?;
    eprintln!("hangar: listening on {grpc}");
    if let Some(http) = http {
        eprintln!("hangar: health and metrics on http://{http}/healthz and /metrics");
    }
    serving.await?;
    eprintln!("hangar: stopped");
    Ok(0)
}

async fn images(cmd: ImagesCmd) -> Result<u8> {
    let engine = hangar_engine::Engine::open(hangar_engine::EngineConfig::from_env()?)?;
    if let ImagesCmd::Prune = cmd {
        let (layers, blobs) = engine.prune_images().await?;
        outln!("removed {layers} layers and {blobs} blobs");
        return Ok(0);
    }
    let store = engine.images().clone();
    tokio::task::spawn_blocking(move || -> Result<u8> {
        match cmd {
            ImagesCmd::Import { archive } => {
                for rec in store.import(&archive)? {
                    outln!("{} {}", rec.reference, rec.id);
                }
            }
            ImagesCmd::Ls => {
                outln!("{:<50} {:<20} {:>6}  COMMAND", "REFERENCE", "ID", "LAYERS");
                for rec in store.list()? {
                    let cmd: Vec<_> = rec.config.entrypoint.iter().chain(&rec.config.cmd).cloned().collect();
                    outln!(
                        "{:<50} {:<20} {:>6}  {}",
                        rec.reference,
                        &rec.id[..rec.id.len().min(19)],
                        rec.layers.len(),
                        cmd.join(" ")
                    );
                }
            }
            ImagesCmd::Prune => unreachable!("handled above"),
            ImagesCmd::Pull { reference } => {
                let registries = store.registries().clone();
                let mut last = String::new();
                let rec = store.pull(&reference, &registries, |digest, n, total| {
                    let short = &digest[digest.len().min(7)..digest.len().min(19)];
                    // One line per layer as it completes, so the output stays readable in logs too.
                    if n == total && last != digest {
                        eprintln!("{short}: {:.1} MB done", total as f64 / 1e6);
                        last = digest.to_string();
                    }
                })?;
                outln!("{} {}", rec.reference, rec.id);
            }
            ImagesCmd::Rm { references } => {
                for r in references {
                    store.remove(&r)?;
                    outln!("{r}");
                }
            }
        }
        Ok(0)
    })
    .await?
}
