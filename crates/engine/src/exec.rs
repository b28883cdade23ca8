//! Execs: a command run in a running sandbox, with its output streamed straight from the process's pipes.

use crate::sandbox::agent_error;
use crate::{new_id, Engine, Error, Result};
use hangar_agent::protocol::{ExecRequest, ExitStatus, Request, Response};
use hangar_agent::wire::{Conn, Writer};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// Largest chunk handed out in one [`ExecEvent::Output`].
const READ_CHUNK: usize = 1024 * 1024;
/// After the process has exited, a pipe that stays silent this long is closed even if a process that
/// escaped the exec's process group still holds it open.
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Kill the whole process tree after this long.
    pub timeout: Option<Duration>,
    /// Bytes to feed on stdin (then end of file); stdin is `/dev/null` when `None` and `stdin_pipe` is off.
    pub stdin: Option<Vec<u8>>,
    /// Hand the stdin pipe to the caller ([`ExecStream::take_stdin`]) to write at its own pace.
    pub stdin_pipe: bool,
}

/// Which output pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal that killed it.
    pub signal: Option<i32>,
    /// Killed because its timeout passed.
    pub timed_out: bool,
    /// Killed because it was cancelled.
    pub cancelled: bool,
    /// Total bytes written to stdout.
    pub stdout_bytes: u64,
    /// Total bytes written to stderr.
    pub stderr_bytes: u64,
}

/// One event of an exec's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes written by the process, in order per stream; `offset` is the stream position of `data[0]`.
    Output {
        /// Which pipe.
        stream: OutputStream,
        /// Byte offset within that stream.
        offset: u64,
        /// The bytes (shared, so handing a chunk on to a callback or the network never copies it).
        data: bytes::Bytes,
    },
    /// The process ended and both pipes are drained; always the last event.
    Exit(ExecExit),
}

/// A running exec. Dropping it cancels the exec (its whole process group is killed).
pub struct ExecStream {
    id: String,
    sandbox: String,
    pid: i32,
    conn: Conn,
    writer: Writer,
    pipes: [Option<pipe::Receiver>; 2],
    offsets: [u64; 2],
    stdin: Option<(pipe::Sender, Vec<u8>, usize)>,
    stdin_pipe: Option<pipe::Sender>,
    exit: Option<ExitStatus>,
    done: bool,
}

impl Engine {
    /// Starts `spec` in sandbox `id`. Fails with a typed error when the sandbox is unknown or not running,
    /// the argv is invalid, or the command does not exist.
    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecStream> {
        match spec.argv.first() {
            None => return Err(Error::InvalidArgument("argv: the command is empty".into())),
            Some(a) if a.is_empty() => return Err(Error::InvalidArgument("argv: argv[0] is empty".into())),
            _ => {}
        }
        if let Some(a) = spec.argv.iter().find(|a| a.contains('\0')) {
            return Err(Error::InvalidArgument(format!("argv: argument {a:?} contains a NUL byte")));
        }
        if spec.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidArgument("timeout: must be positive".into()));
        }
        let mut conn = self.connect(id).await?;
        let req = ExecRequest {
            argv: spec.argv.clone(),
            env: spec.env,
            cwd: spec.cwd,
            timeout_ms: spec.timeout.map(|t| t.as_millis().max(1) as u64),
            stdin: spec.stdin.is_some() || spec.stdin_pipe,
        };
        conn.send(&Request::Exec(req)).await.map_err(|e| self.gone(id, "exec", e))?;
        let pid = match conn.recv::<Response>().await.map_err(|e| self.gone(id, "exec", e))? {
            Some(Response::Started { pid }) => pid,
            Some(Response::Error { kind, message }) => return Err(agent_error(id, &spec.argv[0], kind, message)),
            other => return Err(self.unexpected(id, &spec.argv[0], other)),
        };
        let mut fds = conn.take_fds().into_iter();
        let mut next_pipe = |what: &str| {
            fds.next()
                .ok_or_else(|| Error::Agent { id: id.into(), message: format!("no {what} descriptor with the exec") })
        };
        let recv = |fd| pipe::Receiver::from_owned_fd(fd).map_err(|e| Error::io("open exec pipe of", id, e));
        let out = recv(next_pipe("stdout")?)?;
        let err = recv(next_pipe("stderr")?)?;
        let mut stdin_pipe = None;
        let mut stdin = None;
        if spec.stdin.is_some() || spec.stdin_pipe {
            let tx =
                pipe::Sender::from_owned_fd(next_pipe("stdin")?).map_err(|e| Error::io("open exec stdin of", id, e))?;
            match spec.stdin {
                Some(data) => stdin = Some((tx, data, 0)),
                None => stdin_pipe = Some(tx),
            }
        }
        let writer = conn.writer();
        Ok(ExecStream {
            id: new_id("ex"),
            sandbox: id.to_string(),
            pid,
            conn,
            writer,
            pipes: [Some(out), Some(err)],
            offsets: [0, 0],
            stdin,
            stdin_pipe,
            exit: None,
            done: false,
        })
    }
}

async fn read_chunk(rx: &mut Option<pipe::Receiver>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    match rx {
        Some(r) => r.read_buf(&mut buf).await.map(|_| buf),
        None => std::future::pending().await,
    }
}

async fn feed(stdin: &mut Option<(pipe::Sender, Vec<u8>, usize)>) -> std::io::Result<usize> {
    match stdin {
        Some((tx, data, pos)) if *pos < data.len() => tx.write(&data[*pos..]).await,
        _ => std::future::pending().await,
    }
}

impl ExecStream {
    /// This exec's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The write end of the exec's stdin when it was started with `stdin_pipe`; dropping it is end of file.
    pub fn take_stdin(&mut self) -> Option<pipe::Sender> {
        self.stdin_pipe.take()
    }

    /// The process id inside the sandbox.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal to the exec's whole process group. SIGKILL cancels it.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.writer.send(&Request::Signal { signal }).await.map_err(|e| Error::SandboxGone {
            id: self.sandbox.clone(),
            detail: format!("signal exec {}: {e}", self.id),
        })
    }

    /// The next event; `Ok(None)` after [`ExecEvent::Exit`]. Output arrives as soon as the process writes
    /// it; the exit comes only after both pipes are drained, so every byte precedes it.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        if self.done {
            return Ok(None);
        }
        if matches!(&self.stdin, Some((_, d, p)) if *p >= d.len()) {
            self.stdin = None; // all fed: closing the pipe is the end of file
        }
        loop {
            if self.pipes.iter().all(Option::is_none) {
                if let Some(s) = self.exit {
                    self.done = true;
                    return Ok(Some(ExecEvent::Exit(ExecExit {
                        code: s.code,
                        signal: s.signal,
                        timed_out: s.timed_out,
                        cancelled: s.cancelled,
                        stdout_bytes: self.offsets[0],
                        stderr_bytes: self.offsets[1],
                    })));
                }
            }
            let exited = self.exit.is_some();
            let [out, err] = &mut self.pipes;
            let (i, chunk) = tokio::select! {
                biased;
                r = read_chunk(out) => (0, r),
                r = read_chunk(err) => (1, r),
                w = feed(&mut self.stdin) => {
                    match w {
                        Ok(n) => if let Some((_, d, p)) = &mut self.stdin { *p += n; if *p >= d.len() { self.stdin = None; } },
                        // The process closed its stdin (or exited): the rest cannot be delivered.
                        Err(_) => self.stdin = None,
                    }
                    continue;
                }
                msg = self.conn.recv::<Response>(), if !exited => {
                    match msg {
                        Ok(Some(Response::Exited(s))) => { self.exit = Some(s); self.stdin = None; continue; }
                        Ok(Some(other)) => return Err(Error::Agent { id: self.sandbox.clone(), message: format!("unexpected {other:?} during exec") }),
                        Ok(None) | Err(_) => {
                            self.done = true;
                            return Err(Error::SandboxGone { id: self.sandbox.clone(), detail: format!("exec {} lost its agent before the command ended", self.id) });
                        }
                    }
                }
                _ = tokio::time::sleep(DRAIN_IDLE), if exited => {
                    self.pipes = [None, None];
                    continue;
                }
            };
            match chunk {
                Ok(data) if data.is_empty() => self.pipes[i] = None,
                Ok(data) => {
                    let offset = self.offsets[i];
                    self.offsets[i] += data.len() as u64;
                    let stream = if i == 0 { OutputStream::Stdout } else { OutputStream::Stderr };
                    return Ok(Some(ExecEvent::Output { stream, offset, data: data.into() }));
                }
                Err(e) => {
                    self.done = true;
                    return Err(Error::io("read exec output of", &self.sandbox, e));
                }
            }
        }
    }
}
