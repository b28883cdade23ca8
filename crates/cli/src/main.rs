//! `hangar`: the command line. A thin user of the SDK: argument parsing, printing, exit codes.

mod bench;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hangar::{Client, Sandbox, SandboxBuilder};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for failures of hangar itself (not of the command), as docker uses.
const HANGAR_FAILED: u8 = 125;
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
        /// Environment variable, KEY=VALUE (repeatable).
        #[arg(long = "env", short = 'e', value_parser = key_value)]
        env: Vec<(String, String)>,
        /// Working directory.
        #[arg(long)]
        cwd: Option<String>,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
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
        Err(e) => {
            eprintln!("hangar: {e:#}");
            ExitCode::from(HANGAR_FAILED)
        }
    }
}

/// The exit code a shell would give for a command result: its code, or 128+N when killed by signal N.
fn shell_code(returncode: i32) -> u8 {
    if returncode < 0 {
        (128 - returncode).min(255) as u8
    } else {
        returncode.min(255) as u8
    }
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
                r = run_streaming(&sb, command, cwd, vec![], timeout) => r,
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
            println!("{}", b.create().await?.id());
            Ok(0)
        }
        Cmd::Exec { id, env, cwd, timeout, command } => {
            let timeout = timeout.map(|t| seconds(t, "--timeout")).transpose()?;
            let sb = Sandbox::from_id(&id).await?;
            run_streaming(&sb, command, cwd, env, timeout).await
        }
        Cmd::Ls { json } => {
            let all = Client::from_env()?.list().await?;
            if json {
                for i in &all {
                    println!("{}", serde_json::to_string(i)?);
                }
                return Ok(0);
            }
            println!("{:<20} {:<11} {:<8} {:<6} {:<18} COMMAND", "ID", "STATE", "IMAGE", "EXIT", "ENDED BY");
            for i in all {
                let exit = match (i.exit_code, i.exit_signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(s)) => format!("sig{s}"),
                    _ => "-".into(),
                };
                let ended = i.end_reason.as_deref().unwrap_or("-");
                println!(
                    "{:<20} {:<11} {:<8} {:<6} {:<18} {}",
                    i.id,
                    i.state,
                    i.image,
                    exit,
                    ended,
                    i.command.join(" ")
                );
            }
            Ok(0)
        }
        Cmd::Stop { ids, grace } => {
            let grace =
                Duration::try_from_secs_f64(grace).map_err(|_| anyhow!("--grace {grace}: not a number of seconds"))?;
            for id in ids {
                let info = Sandbox::from_id(&id).await?.stop_with_grace(grace).await?;
                println!("{id} {}", info.state);
            }
            Ok(0)
        }
        Cmd::Rm { ids } => {
            for id in ids {
                Sandbox::from_id(&id).await?.delete().await?;
                println!("{id}");
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
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
) -> Result<u8> {
    let mut exec = sb.exec(command).stream_output(true);
    if let Some(c) = cwd {
        exec = exec.cwd(c);
    }
    for (k, v) in env {
        exec = exec.env(k, v);
    }
    if let Some(t) = timeout {
        exec = exec.timeout(t);
    }
    match exec.await {
        Ok(r) => Ok(shell_code(r.returncode)),
        Err(hangar::Error::Timeout { timeout, .. }) => {
            eprintln!("hangar: command timed out after {timeout:?}; its processes were killed");
            Ok(124)
        }
        Err(e) => Err(e.into()),
    }
}

/// `ID:PATH` → (id, path); anything else is a local path.
fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.starts_with("sb-") && !path.is_empty()).then_some((id, path))
}

async fn copy(src: &str, dst: &str) -> Result<u8> {
    match (remote(src), remote(dst)) {
        (Some((id, path)), None) => {
            let data = Sandbox::from_id(id).await?.read_file(path).await?;
            tokio::fs::write(dst, data).await.with_context(|| format!("write {dst}"))?;
        }
        (None, Some((id, path))) => {
            let data = tokio::fs::read(src).await.with_context(|| format!("read {src}"))?;
            Sandbox::from_id(id).await?.write_file(path, data).await?;
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
        println!("removed {layers} layers and {blobs} blobs");
        return Ok(0);
    }
    let store = engine.images().clone();
    tokio::task::spawn_blocking(move || -> Result<u8> {
        match cmd {
            ImagesCmd::Import { archive } => {
                for rec in store.import(&archive)? {
                    println!("{} {}", rec.reference, rec.id);
                }
            }
            ImagesCmd::Ls => {
                println!("{:<50} {:<20} {:>6}  COMMAND", "REFERENCE", "ID", "LAYERS");
                for rec in store.list()? {
                    let cmd: Vec<_> = rec.config.entrypoint.iter().chain(&rec.config.cmd).cloned().collect();
                    println!(
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
                println!("{} {}", rec.reference, rec.id);
            }
            ImagesCmd::Rm { references } => {
                for r in references {
                    store.remove(&r)?;
                    println!("{r}");
                }
            }
        }
        Ok(0)
    })
    .await?
}
