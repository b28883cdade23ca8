//! `hangar`: the command line. A thin user of the SDK: argument parsing, printing, exit codes.

mod bench;
mod commands;

use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};
use hangar::{Sandbox, SandboxBuilder};
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

/// Whether standard output is a pipe or socket whose reader is gone (a write there failed for that reason).
fn stdout_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let out = std::io::stdout();
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&out), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Writes output bytes to standard output as they are, straight to its descriptor (`Stdout` is
/// line-buffered: it would scan every MiB streamed for its last newline), classifying a failure.
fn write_stdout(data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    // (Everything printed through `out` is flushed as it goes: nothing of it is waiting to come first.)
    out.flush().map_err(stdout_error)?;
    let mut rest = data;
    while !rest.is_empty() {
        match nix::unistd::write(&out, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(stdout_error(e.into())),
        }
    }
    Ok(())
}

/// Standard output for a listing: buffered, one write per 64 KiB rather than one per line. Write lines with
/// `writeln!(out, ...).map_err(stdout_error)?` and end with `out.flush().map_err(stdout_error)?`.
fn listing() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock())
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
        /// Keep the ended sandbox's record (for `hangar ls`) instead of removing it, as `docker run` without
        /// `--rm` would.
        #[arg(long)]
        keep: bool,
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
        /// Without a command, run the image's own entrypoint and cmd (as `docker run IMAGE`).
        #[arg(long, conflicts_with = "command")]
        image_command: bool,
        /// Main command; its output is the sandbox's log (`hangar logs`). Without one the sandbox idles until
        /// it is stopped or its lifetime ends.
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
    /// Print a sandbox's log: its main command's stdout and stderr (in the order written), also after the
    /// sandbox ended. Exits 0 (the log was read), whatever the command did.
    Logs {
        /// Sandbox id.
        id: String,
        /// Keep printing what the main command writes, until it ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start at this byte offset of the log (where an earlier read stopped).
        #[arg(long, default_value_t = 0, conflicts_with = "tail")]
        since_offset: u64,
        /// Start at the last N lines.
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<u64>,
        /// Start at what was written this long ago or later: 90s, 10m, 2h, 1d (with -n: whichever is later).
        #[arg(long, value_name = "AGE", value_parser = age)]
        since: Option<Duration>,
        /// When done, print the offset to read on from (`--since-offset`) on stderr.
        #[arg(long)]
        print_offset: bool,
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
    /// Show a sandbox's network policy, or replace it while it runs (new connections follow it at once).
    Network {
        /// Sandbox id.
        id: String,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Publish a sandbox's port on this machine's 127.0.0.1 and print the address. Embedded, it stays until the
    /// sandbox ends; through a server (HANGAR_URL) this command tunnels it over the server's API until stopped.
    Port {
        /// Sandbox id.
        id: String,
        /// The port inside the sandbox (its loopback, or all its addresses).
        port: u16,
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
    /// Serve the gRPC APIs (hangar.v1, coreweave.sandbox.v1) until SIGTERM or Ctrl-C, with sandboxes on this
    /// machine or, with `--backend kubernetes`, as Pods of a cluster.
    Serve {
        /// Address for gRPC.
        #[arg(long, default_value = "127.0.0.1:7777")]
        listen: std::net::SocketAddr,
        /// Also serve gRPC on this Unix socket (mode 0600): clients on this machine use `HANGAR_URL=unix:PATH`
        /// and skip the TCP stack.
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// Address for the HTTP health (`/healthz`) and Prometheus metrics (`/metrics`) endpoints.
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// File of TENANT=TOKEN lines; or set HANGAR_SERVER_TOKENS="tenant=token,...".
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        /// On shutdown, how long in-flight calls may finish before they are cancelled (seconds).
        #[arg(long, default_value_t = 10.0)]
        drain: f64,
        /// Where sandboxes run: `local` (this machine) or `kubernetes`.
        #[arg(long, default_value = "local", value_parser = ["local", "kubernetes"])]
        backend: String,
        #[command(flatten)]
        kubernetes: commands::serve::KubernetesArgs,
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
    #[command(flatten)]
    network: NetworkArgs,
}

/// What a sandbox may reach on the network.
#[derive(Args)]
struct NetworkArgs {
    /// none (loopback only) or egress (outgoing connections, by --allow and --deny); default: the engine's
    /// or server's (HANGAR_NETWORK, else none). --allow or --deny imply egress.
    #[arg(long, value_parser = network_mode)]
    network: Option<hangar::NetworkMode>,
    /// An address, CIDR range or domain name (pypi.org, *.example.com) the sandbox may reach; with none,
    /// every public address. Private, link-local and loopback ranges need this (repeatable).
    #[arg(long, value_name = "CIDR|NAME", value_parser = net_target)]
    allow: Vec<hangar::NetTarget>,
    /// An address, range or name it may never reach, whatever --allow says (repeatable).
    #[arg(long, value_name = "CIDR|NAME", value_parser = net_target)]
    deny: Vec<hangar::NetTarget>,
}

impl NetworkArgs {
    /// The policy asked for, if any.
    fn policy(self) -> Option<hangar::NetworkPolicy> {
        let lists = !(self.allow.is_empty() && self.deny.is_empty());
        let mode = self.network.or(lists.then_some(hangar::NetworkMode::Egress))?;
        Some(hangar::NetworkPolicy { mode, allow: self.allow, deny: self.deny })
    }
}

fn network_mode(s: &str) -> Result<hangar::NetworkMode, String> {
    hangar::NetworkMode::parse(s).ok_or_else(|| format!("{s:?} is not none or egress"))
}

fn net_target(s: &str) -> Result<hangar::NetTarget, String> {
    hangar::NetTarget::parse(s).map_err(|e| e.message.to_string())
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
        if let Some(p) = self.network.policy() {
            b = b.network(p);
        }
        Ok(b)
    }
}

/// An age such as `90s`, `10m`, `2h` or `1d` (a bare number is seconds).
fn age(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not an age such as 90s, 10m, 2h or 1d");
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
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
    // One-shot commands run on the main thread alone: starting and joining worker threads cost a `hangar
    // run` or `exec` more than they could win (their work is waiting on the agent, and blocking work goes to
    // tokio's blocking threads either way). The server serves many clients at once; the bench measures the SDK
    // as a program on a multi-threaded runtime would use it.
    let mut runtime = match cli.cmd {
        Cmd::Serve { .. } | Cmd::Bench(_) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = match runtime.enable_all().build() {
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
    use std::io::Write as _;
    let mut out = listing();
    for i in items {
        serde_json::to_writer(&mut out, i)?;
        writeln!(out).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    Ok(0)
}

async fn dispatch(cmd: Cmd) -> Result<u8> {
    use commands::{exec, files, images, sandboxes, serve};
    match cmd {
        Cmd::Run { sandbox, timeout, cwd, keep, command } => exec::run(sandbox, timeout, cwd, keep, command).await,
        Cmd::Create { sandbox, tags, image_command, command } => {
            sandboxes::create(sandbox, tags, image_command, command).await
        }
        Cmd::Exec { id, exec: args, detach, interactive, tty, merged, keep_running, command } => {
            let flags = ExecFlags { detach, interactive, tty, merged, keep_running };
            exec::exec(id, args, flags, command).await
        }
        Cmd::Attach { id, exec: x, stdout_offset, stderr_offset, interactive } => {
            exec::attach(id, x, [stdout_offset, stderr_offset], interactive).await
        }
        Cmd::Logs { id, follow, since_offset, tail, since, print_offset } => {
            let from = exec::LogStart { offset: since_offset, tail, age: since };
            exec::logs(id, follow, from, print_offset).await
        }
        Cmd::Execs { id, json } => exec::execs(id, json).await,
        Cmd::Kill { id, exec: x, signal } => exec::kill(id, x, signal).await,
        Cmd::Shell { id, command } => exec::shell(id, command).await,
        Cmd::Ls { json } => sandboxes::ls(json).await,
        Cmd::Port { id, port } => sandboxes::port(id, port).await,
        Cmd::Network { id, network } => sandboxes::network(id, network.policy()).await,
        Cmd::Stop { ids, grace } => sandboxes::stop(ids, grace).await,
        Cmd::Rm { ids } => sandboxes::rm(ids).await,
        Cmd::Cp { src, dst } => files::copy(&src, &dst).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Images(cmd) => images::images(cmd).await,
        Cmd::Serve { listen, socket, http_listen, token_file, drain, backend, kubernetes } => {
            let listen = hangar_server::Listen { grpc: listen, socket, http: http_listen };
            let kubernetes = (backend == "kubernetes").then_some(kubernetes);
            serve::serve(listen, token_file, drain, kubernetes).await
        }
    }
}

/// The on/off switches of `hangar exec`.
pub(crate) struct ExecFlags {
    pub detach: bool,
    pub interactive: bool,
    pub tty: bool,
    pub merged: bool,
    pub keep_running: bool,
}
