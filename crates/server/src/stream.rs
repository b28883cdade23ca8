//! The streaming half of `StreamExec`: the client's messages (stdin, resizes, signals) into the exec, and
//! the exec's events out to the client with keepalives, each on a task of its own.

use crate::status::from_engine;
use hangar_engine::{Engine, ExecControl, ExecEvent, ExecStream, OutputStream};
use hangar_proto::v1 as pb;
use hangar_types::Next;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::unix::pipe;
use tokio_util::task::AbortOnDropHandle;
use tonic::{Status, Streaming};

/// Output events buffered per stream before the exec's journal stops being read (backpressure).
pub(crate) const STREAM_BUFFER: usize = 16;
/// How long a streamed exec whose server dies (a restart, an upgrade) waits for a client to resume before its
/// disconnect policy applies: as long as the SDK keeps trying to resume.
pub(crate) const RESTART_HOLD: Duration = Duration::from_secs(120);
/// A streamed exec that has sent nothing for this long sends a keepalive frame (unless the client asks
/// for another interval), so proxies and load balancers never see an idle stream.
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

pub(crate) fn keepalive(ms: u64) -> Duration {
    match ms {
        0 => DEFAULT_KEEPALIVE,
        ms => Duration::from_millis(ms.clamp(20, 300_000)),
    }
}

/// An exec run to its end with its output kept up to a cap per stream: both unary `Exec`s.
pub(crate) struct Collected {
    /// stdout, stderr: the first `cap` bytes of each.
    pub(crate) out: [Vec<u8>; 2],
    /// Whether a stream had more than the cap (or lost bytes).
    pub(crate) truncated: [bool; 2],
    pub(crate) end: hangar_engine::ExecEnd,
}

/// Follows `stream` to its exit, keeping the first `cap` bytes of each stream; `seen` is told every chunk.
pub(crate) async fn collect(
    stream: &mut ExecStream,
    cap: usize,
    seen: impl Fn(OutputStream, usize),
) -> hangar_engine::Result<Collected> {
    let (mut out, mut truncated) = ([Vec::new(), Vec::new()], [false; 2]);
    while let Some(ev) = stream.next().await? {
        match ev {
            ExecEvent::Output { stream: which, data, .. } => {
                seen(which, data.len());
                let buf = &mut out[which.index()];
                let room = cap.saturating_sub(buf.len());
                truncated[which.index()] |= data.len() > room;
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
            // Cannot happen here (a reader is attached all along), but it is a loss all the same.
            ExecEvent::Gap { stream: which, .. } => truncated[which.index()] = true,
            ExecEvent::Exit(end) => return Ok(Collected { out, truncated, end }),
        }
    }
    Err(hangar_engine::Error::Internal(format!("exec {}: its stream ended without an exit", stream.id())))
}

fn error_frame(st: Status) -> pb::stream_exec_response::Msg {
    let reason = st.metadata().get(crate::REASON_KEY).and_then(|v| v.to_str().ok()).unwrap_or("INTERNAL").to_string();
    pb::stream_exec_response::Msg::Error(pb::Error { reason, message: st.message().to_string() })
}

type Outbound = tokio::sync::mpsc::Sender<Result<pb::StreamExecResponse, Status>>;

/// stdin, resizes and signals from the client. stdin goes through a resumable writer opened at the first
/// chunk's offset; only an explicit `close` is stdin's end of file (a request stream that ends, cleanly or
/// not, may be a client about to resume on another connection).
pub(crate) async fn client_messages(
    engine: Arc<Engine>,
    sandbox: String,
    exec: String,
    mut inbound: Streaming<pb::StreamExecRequest>,
    control: ExecControl,
    tx: Outbound,
) {
    use pb::stream_exec_request::Msg as In;
    use pb::stream_exec_response::Msg as Out;
    let mut writer: Option<hangar_engine::StdinWriter> = None;
    let mut stdin_failed = false;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m.msg,
            Ok(None) | Err(_) => return,
        };
        let (offset, data, close) = match msg {
            Some(In::Stdin(c)) => (c.offset, Some(c.data), false),
            Some(In::Close(_)) => (0, None, true),
            Some(In::Resize(r)) => {
                let (rows, cols) = (r.rows.min(u16::MAX as u32) as u16, r.cols.min(u16::MAX as u32) as u16);
                // In order with the stdin sent before it, through stdin's connection once there is one.
                let ordered = match writer.as_mut() {
                    Some(w) => w.resize(rows, cols).await.unwrap_or(false),
                    None => false,
                };
                if !ordered {
                    let _ = control.resize(rows, cols).await;
                }
                continue;
            }
            Some(In::Signal(s)) => {
                let _ = control.signal(s.signal).await;
                continue;
            }
            _ => continue,
        };
        if stdin_failed {
            if close {
                return;
            }
            continue;
        }
        if writer.is_none() {
            match engine.open_stdin(&sandbox, &exec, offset).await {
                Ok(w) => writer = Some(w),
                Err(e) => {
                    tracing::debug!(%sandbox, %exec, error = %e, "stdin not writable");
                    stdin_failed = true;
                    continue;
                }
            }
        }
        let w = writer.as_mut().expect("opened above");
        let acked = match data {
            Some(d) => w.write(offset, &d).await,
            None => w.close().await,
        };
        match acked {
            Ok(offset) => {
                let _ = tx.send(Ok(pb::StreamExecResponse { msg: Some(Out::StdinAck(pb::StdinAck { offset })) })).await;
            }
            Err(e) => {
                tracing::debug!(%sandbox, %exec, error = %e, "stdin closed");
                stdin_failed = true;
            }
        }
        if close {
            return;
        }
    }
}

/// An exec's events on a task of their own, one ahead: `ExecStream::next` is not cancel-safe, so a caller that
/// also waits for something else (a timer, the client leaving) selects on the receiver instead. The task ends
/// after the last event, or when the handle is dropped (which drops the stream: the client left).
pub(crate) fn read_ahead(
    mut stream: ExecStream,
) -> (tokio::sync::mpsc::Receiver<hangar_engine::Result<Option<ExecEvent>>>, tokio_util::task::AbortOnDropHandle<()>) {
    let (ev_tx, ev_rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        loop {
            let ev = stream.next().await;
            let last = !matches!(ev, Ok(Some(ExecEvent::Output { .. } | ExecEvent::Gap { .. })));
            if ev_tx.send(ev).await.is_err() || last {
                return;
            }
        }
    });
    (ev_rx, tokio_util::task::AbortOnDropHandle::new(reader))
}

/// What [`forward_events`] gets from its reader.
enum Ahead {
    Event(ExecEvent),
    /// Bytes of the journal's files, named: once their `Piped` frame is on its way (`go`), the reader moves
    /// them into the client's pipe.
    Piped {
        stream: OutputStream,
        offset: u64,
        len: u64,
        go: tokio::sync::oneshot::Sender<()>,
    },
}

type AheadRx = tokio::sync::mpsc::Receiver<hangar_engine::Result<Option<Ahead>>>;

/// As [`read_ahead`], for a client: with `pipes`, output in the journal's files goes into its pipe by the
/// kernel (`sendfile`: page references, no copy here), after the frame that announces it and before the next.
fn read_ahead_to(mut stream: ExecStream, pipes: Option<[pipe::Sender; 2]>) -> (AheadRx, AbortOnDropHandle<()>) {
    let (ev_tx, ev_rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        loop {
            let next = match &pipes {
                None => stream.next().await.map(|ev| ev.map(Next::Event)),
                Some(_) => stream.next_unsent().await,
            };
            let (ahead, last) = match next {
                Ok(Some(Next::Sent { stream: which, offset, len })) => {
                    let (go, gone) = tokio::sync::oneshot::channel();
                    let named = Ahead::Piped { stream: which, offset, len, go };
                    if ev_tx.send(Ok(Some(named))).await.is_err() || gone.await.is_err() {
                        return;
                    }
                    let pipe = &pipes.as_ref().expect("only named with pipes")[which.index()];
                    if let Err(e) = pipe_out(&mut stream, which, len, pipe).await {
                        // The client's pipe broke: the client went (its stream ends with this task).
                        tracing::debug!(exec = %stream.id(), error = %e, "client pipe");
                        return;
                    }
                    stream.acknowledge().await;
                    continue;
                }
                Ok(Some(Next::Event(ev))) => {
                    let last = !matches!(ev, ExecEvent::Output { .. } | ExecEvent::Gap { .. });
                    (Ok(Some(Ahead::Event(ev))), last)
                }
                other => (other.map(|_| None), true),
            };
            if ev_tx.send(ahead).await.is_err() || last {
                return;
            }
        }
    });
    (ev_rx, AbortOnDropHandle::new(reader))
}

/// Moves the `len` bytes of `which` that come next into `pipe`, as it takes them.
async fn pipe_out(
    stream: &mut ExecStream,
    which: OutputStream,
    mut len: u64,
    pipe: &pipe::Sender,
) -> std::io::Result<()> {
    while len > 0 {
        pipe.writable().await?;
        match pipe.try_io(|| stream.send_some(which, len, pipe.as_fd())) {
            Ok(n) => len -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The pipes a client on this machine asked its output to go through (`LocalPipes`): opened when the
/// client's pid is known (it came over the Unix socket) and both are anonymous pipes of its. `None` (output
/// in frames, as for every client) otherwise.
pub(crate) fn client_pipes(peer: Option<i32>, asked: Option<pb::LocalPipes>) -> Option<[pipe::Sender; 2]> {
    let (pid, asked) = (peer?, asked?);
    let open = |fd| {
        open_client_pipe(pid, fd)
            .map_err(|e| tracing::debug!(pid, fd, error = %e, "output goes in frames: a client pipe cannot be used"))
            .ok()
    };
    Some([open(asked.stdout_fd)?, open(asked.stderr_fd)?])
}

/// Descriptor `fd` of process `pid`, opened for writing through /proc, if it is an anonymous pipe (never a
/// file or device the client might name instead).
fn open_client_pipe(pid: i32, fd: i32) -> std::io::Result<pipe::Sender> {
    let path = format!("/proc/{pid}/fd/{fd}");
    let link = std::fs::read_link(&path)?;
    if !link.to_string_lossy().starts_with("pipe:[") {
        return Err(std::io::Error::other(format!("{path} is {}, not a pipe", link.display())));
    }
    let pipe = pipe::OpenOptions::new().open_sender(&path)?;
    // Still that pipe: not whatever the client put at that number since the link was read.
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", pipe.as_raw_fd()))?;
    if opened != link {
        return Err(std::io::Error::other(format!("{path} changed to {} while opened", opened.display())));
    }
    // A chunk of output in one go where the system allows it (a small pipe works, with more wakeups).
    let _ = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    Ok(pipe)
}

/// Exec events to the client, with a keepalive whenever the stream has been quiet for `keepalive`. A client
/// that went away drops the stream (detaching; the exec's policy decides what happens to it). With `pipes`,
/// output in the journal's files goes as a `Piped` frame followed by its bytes in that stream's pipe.
pub(crate) async fn forward_events(
    stream: ExecStream,
    tx: Outbound,
    keepalive: Duration,
    metrics: Arc<crate::Metrics>,
    pipes: Option<[pipe::Sender; 2]>,
) {
    use pb::stream_exec_response::Msg as Out;
    let out = |m: Out| Ok(pb::StreamExecResponse { msg: Some(m) });
    let started = Instant::now();
    let control = stream.control();
    // The keepalive timer must be able to fire while the reader waits.
    let (mut ev_rx, _reader) = read_ahead_to(stream, pipes);
    let mut pos = [0u64; 2];
    let counted = |stream: OutputStream, len: u64| {
        let counter = match stream {
            OutputStream::Stdout => &metrics.stdout_bytes,
            OutputStream::Stderr => &metrics.stderr_bytes,
        };
        counter.fetch_add(len, Relaxed);
    };
    loop {
        let ev = tokio::select! {
            ev = ev_rx.recv() => ev,
            _ = tx.closed() => { let _ = control.detach().await; return; }
            _ = tokio::time::sleep(keepalive) => {
                metrics.keepalives.fetch_add(1, Relaxed);
                let k = pb::Keepalive { stdout_offset: pos[0], stderr_offset: pos[1] };
                if tx.send(out(Out::Keepalive(k))).await.is_err() {
                    let _ = control.detach().await;
                    return;
                }
                continue;
            }
        };
        // A frame, and whom to tell once it is on its way.
        let (msg, go) = match ev {
            Some(Ok(Some(Ahead::Piped { stream, offset, len, go }))) => {
                counted(stream, len);
                metrics.piped_bytes.fetch_add(len, Relaxed);
                pos[stream.index()] = offset + len;
                (out(Out::Piped(pb::Piped { stream: pb::OutputStream::from(stream) as i32, offset, len })), Some(go))
            }
            Some(Ok(Some(Ahead::Event(ev)))) => {
                match &ev {
                    ExecEvent::Output { stream, offset, data } => {
                        counted(*stream, data.len() as u64);
                        pos[stream.index()] = offset + data.len() as u64;
                    }
                    ExecEvent::Gap { stream, from, to } => {
                        pos[stream.index()] = *to;
                        metrics.gap_bytes.fetch_add(to - from, Relaxed);
                    }
                    ExecEvent::Exit(_) => {
                        metrics.exec_seconds.observe(started.elapsed());
                        let _ = tx.send(out(ev.into())).await;
                        return;
                    }
                }
                (out(ev.into()), None)
            }
            Some(Ok(None)) | None => return,
            Some(Err(e)) => {
                let _ = tx.send(out(error_frame(from_engine(e)))).await;
                return;
            }
        };
        if tx.send(msg).await.is_err() {
            // The client went away: its exec's policy applies now (a server that dies instead holds it).
            let _ = control.detach().await;
            return;
        }
        // The client reads the bytes from its pipe once it has the frame: now they may go in.
        if let Some(go) = go {
            let _ = go.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_default_and_stay_within_bounds() {
        assert_eq!(keepalive(0), DEFAULT_KEEPALIVE);
        assert_eq!(keepalive(1), Duration::from_millis(20));
        assert_eq!(keepalive(u64::MAX), Duration::from_secs(300));
        assert_eq!(keepalive(500), Duration::from_millis(500));
    }

    /// A client's descriptor is written to only when it is an anonymous pipe: never a file, a named pipe or a
    /// number it does not hold; and only for a client known by its pid (the Unix socket).
    #[tokio::test]
    async fn only_a_clients_anonymous_pipes_are_opened() {
        use std::io::Read;
        use tokio::io::AsyncWriteExt;
        let me = std::process::id() as i32;
        let (mut r, w) = std::io::pipe().unwrap();
        let mut opened = open_client_pipe(me, w.as_raw_fd()).unwrap();
        opened.write_all(b"through the pipe").await.unwrap();
        drop((opened, w));
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the pipe");

        let dir = std::env::temp_dir().join(format!("hangar-pipes-{me}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("file")).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let named = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        for (what, fd) in [("file", file.as_raw_fd()), ("named pipe", named.as_raw_fd())] {
            let err = open_client_pipe(me, fd).unwrap_err().to_string();
            assert!(err.contains("not a pipe"), "{what}: {err}");
        }
        assert!(open_client_pipe(me, 1 << 20).is_err(), "a descriptor the client does not have");
        std::fs::remove_dir_all(&dir).unwrap();

        let (_r, w) = std::io::pipe().unwrap();
        let asked = || Some(pb::LocalPipes { stdout_fd: w.as_raw_fd(), stderr_fd: w.as_raw_fd() });
        assert!(client_pipes(None, asked()).is_none(), "a client over TCP (no pid) gets frames");
        assert!(client_pipes(Some(me), None).is_none(), "a client that did not ask gets frames");
        assert!(client_pipes(Some(me), asked()).is_some());
    }
}
