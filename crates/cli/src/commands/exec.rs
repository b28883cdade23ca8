//! Commands that run something and follow its output: `run`, `exec`, `attach`, `shell`, `kill`.

use crate::{json_lines, outln, seconds, ExecArgs, ExecFlags, SandboxArgs, RUN_LIFETIME};
use anyhow::{bail, Result};
use hangar::{Ending, ExecEvent, ExecHandle, OnDisconnect, OutputStream, Sandbox};
use std::time::Duration;

/// `hangar run`: a sandbox for one command, stopped when it ends and then removed (unless `keep`); exits with
/// the command's code.
pub(crate) async fn run(
    mut sandbox: SandboxArgs,
    timeout: Option<f64>,
    cwd: Option<String>,
    keep: bool,
    command: Vec<String>,
) -> Result<u8> {
    let timeout = timeout.map(|t| seconds(t, "--timeout")).transpose()?;
    // `run` stops its sandbox itself; the lifetime is only a safety net should this process die, so
    // it must not cut a long command short: a day, or the timeout plus a minute.
    if sandbox.lifetime.is_none() {
        let net = timeout.map_or(RUN_LIFETIME, |t| t + Duration::from_secs(60));
        sandbox.lifetime = Some(net.as_secs_f64());
    }
    let mut phases = Phases::from_env();
    let client = hangar::Client::from_env()?;
    phases.done("open");
    let sb = sandbox.builder()?.client(&client).create().await?;
    phases.done("create");
    let ran = tokio::select! {
        r = run_streaming(&sb, command, cwd, timeout) => r,
        _ = tokio::signal::ctrl_c() => Ok(130),
    };
    phases.done("exec");
    sb.stop_with_grace(Duration::from_secs(1)).await?;
    phases.done("stop");
    if !keep {
        sb.delete().await?;
        phases.done("remove");
    }
    phases.report();
    ran
}

/// Where `hangar run`'s time went, said on stderr when `$HANGAR_PHASES` is `1` (`hangar bench --peers` reads
/// it): `hangar: phases: open=0.8 create=4.1 ...`, milliseconds per phase in order.
struct Phases {
    since: Option<std::time::Instant>,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn from_env() -> Self {
        let on = std::env::var("HANGAR_PHASES").is_ok_and(|v| v == "1");
        Self { since: on.then(std::time::Instant::now), done: vec![] }
    }

    fn done(&mut self, phase: &'static str) {
        if let Some(since) = self.since.as_mut() {
            self.done.push((phase, since.elapsed()));
            *since = std::time::Instant::now();
        }
    }

    fn report(&self) {
        if self.since.is_some() {
            let each: Vec<String> =
                self.done.iter().map(|(p, d)| format!("{p}={:.3}", d.as_secs_f64() * 1e3)).collect();
            eprintln!("hangar: phases: {}", each.join(" "));
        }
    }
}

/// `hangar exec`: runs a command in a sandbox, following its output (or printing its id, detached).
pub(crate) async fn exec(id: String, exec: ExecArgs, flags: ExecFlags, command: Vec<String>) -> Result<u8> {
    let ExecFlags { detach, interactive, tty, merged, keep_running } = flags;
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

/// `hangar attach`: follows an exec from given offsets.
pub(crate) async fn attach(id: String, exec: String, from: [u64; 2], interactive: bool) -> Result<u8> {
    let sb = Sandbox::from_id(&id).await?;
    let h = sb.attach(exec).from_offsets(from[0], from[1]).start().await?;
    follow(h, interactive, false, None).await
}

/// Where `hangar logs` starts: an offset, the last lines, an age.
pub(crate) struct LogStart {
    pub(crate) offset: u64,
    pub(crate) tail: Option<u64>,
    pub(crate) age: Option<Duration>,
}

/// `hangar logs`: a sandbox's log, as it stands or followed.
pub(crate) async fn logs(id: String, follow: bool, from: LogStart, print_offset: bool) -> Result<u8> {
    let sb = Sandbox::from_id(&id).await?;
    let mut logs = sb.logs().follow(follow).from_offset(from.offset);
    if let Some(n) = from.tail {
        logs = logs.tail_lines(n);
    }
    if let Some(age) = from.age {
        logs = logs.since(std::time::SystemTime::now() - age);
    }
    let mut s = logs.start().await?;
    while let Some(ev) = s.next_event().await? {
        match ev {
            ExecEvent::Output { data, .. } => {
                crate::write_stdout(&data)?;
            }
            ExecEvent::Gap { from, to, .. } => {
                eprintln!(
                    "hangar: bytes {from}..{to} of the log were dropped (its cap keeps the first 8 MiB and the newest)"
                )
            }
            ExecEvent::Exit(end) => {
                if let Ending::FailedToStart(f) = &end.ending {
                    eprintln!("hangar: the sandbox's main command never started: {}", f.message);
                }
            }
        }
    }
    if print_offset {
        eprintln!("{}", s.position());
    }
    Ok(0)
}

/// `hangar execs`: a sandbox's execs.
pub(crate) async fn execs(id: String, json: bool) -> Result<u8> {
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

/// `hangar kill`: signals an exec's process tree.
pub(crate) async fn kill(id: String, exec: String, signal: i32) -> Result<u8> {
    Sandbox::from_id(&id).await?.signal_exec(&exec, signal).await?;
    Ok(0)
}

/// `hangar shell`: an interactive shell under a terminal.
pub(crate) async fn shell(id: String, mut command: Vec<String>) -> Result<u8> {
    let sb = Sandbox::from_id(&id).await?;
    if command.is_empty() {
        command = ["sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"]
            .map(String::from)
            .to_vec();
    }
    let (rows, cols) = terminal::size();
    let h =
        sb.exec(command).tty(rows, cols).open_stdin().on_disconnect(OnDisconnect::Kill { grace_ms: 0 }).start().await?;
    follow(h, true, terminal::is_terminal(), None).await
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
    let _stop_feeding: Vec<_> = feeding.into_iter().map(tokio_util::task::AbortOnDropHandle::new).collect();
    if !raw {
        // Output goes from the journal to our stdout and stderr without passing through here.
        use std::os::fd::AsFd;
        std::io::stdout().flush().map_err(crate::stdout_error)?;
        let (out, err) = (std::io::stdout(), std::io::stderr());
        return match h.write_output_to(out.as_fd(), err.as_fd(), gap_note).await {
            Ok(end) => ended(&h, end, timeout),
            Err(_) if crate::stdout_gone() => Err(crate::StdoutClosed.into()),
            Err(e) => Err(e.into()),
        };
    }
    loop {
        match h.next_event().await? {
            Some(ExecEvent::Output { stream: OutputStream::Stdout, data, .. }) => {
                crate::write_stdout(&data)?;
            }
            Some(ExecEvent::Output { data, .. }) => std::io::stderr().lock().write_all(&data)?,
            Some(ExecEvent::Gap { stream, from, to }) => gap_note(stream, from, to),
            Some(ExecEvent::Exit(end)) => {
                drop(_raw);
                return ended(&h, end, timeout);
            }
            None => bail!("exec {}: the stream ended without an exit", h.id()),
        }
    }
}

fn gap_note(stream: OutputStream, from: u64, to: u64) {
    eprintln!(
        "hangar: {stream:?} bytes {from}..{to} were dropped from the journal before this client attached (it keeps the head and the newest output)"
    )
}

/// The exit code a shell would give for how the exec ended (saying why on stderr when it did not exit).
fn ended(h: &ExecHandle, end: hangar::ExecEnd, timeout: Option<Duration>) -> Result<u8> {
    match &end.ending {
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
    }
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
