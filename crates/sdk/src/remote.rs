//! The SDK against a Hangar server: `hangar.v1` over one HTTP/2 channel, errors mapped back to the same
//! typed errors as the embedded engine gives.

use crate::{Error, Result, SandboxInfo, SandboxState};
use bytes::Bytes;
use hangar_proto::convert::{self, PATH_KEY, REASON_KEY, STATE_KEY};
use hangar_proto::v1 as pb;
use hangar_types::{ExecEvent, ExecInfo, ExecSpec, FileErrorKind, Reason, SandboxConfig};
use pb::sandbox_service_client::SandboxServiceClient;
use pb::stream_exec_request::Msg as In;
use pb::stream_exec_response::Msg as Out;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

const CHUNK: usize = 1 << 20;
const MAX_MESSAGE: usize = 16 << 20;

type Grpc = SandboxServiceClient<InterceptedService<Channel, AuthHeader>>;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub(crate) struct AuthHeader(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for AuthHeader {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A connection to a server; clones share the HTTP/2 channel.
#[derive(Clone)]
pub(crate) struct Remote {
    grpc: Grpc,
    pub(crate) url: String,
}

impl Remote {
    pub(crate) fn connect(url: &str, token: Option<&str>) -> Result<Self> {
        // The channel's connection task lives on the SDK's process-wide runtime, not the caller's, so the
        // client outlives any one runtime (tests, the blocking facade, programs with several runtimes).
        let _on_sdk_runtime = crate::blocking::shared_runtime()?.enter();
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| Error::InvalidArgument(format!("server url {url:?}: {e}")))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            // Let the server send output in large frames instead of HTTP/2's default 16 KiB.
            .max_frame_size(1 << 20)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::InvalidArgument("HANGAR_TOKEN: not a valid header value".into()))
            })
            .transpose()?;
        let grpc = SandboxServiceClient::with_interceptor(channel, AuthHeader(header))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self { grpc, url: url.to_string() })
    }

    fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    pub(crate) async fn create(&self, c: SandboxConfig) -> Result<SandboxInfo> {
        let r = self.grpc().create_sandbox(pb::CreateSandboxRequest::from(c)).await.map_err(|s| self.error(s, ""))?;
        Ok(r.into_inner().into())
    }

    pub(crate) async fn get(&self, id: &str) -> Result<SandboxInfo> {
        let r =
            self.grpc().get_sandbox(pb::GetSandboxRequest { id: id.into() }).await.map_err(|s| self.error(s, id))?;
        Ok(r.into_inner().into())
    }

    pub(crate) async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = vec![];
        let mut page_token = String::new();
        loop {
            let req = pb::ListSandboxesRequest { page_size: 1000, page_token, ..Default::default() };
            let r = self.grpc().list_sandboxes(req).await.map_err(|s| self.error(s, ""))?.into_inner();
            out.extend(r.sandboxes.into_iter().map(SandboxInfo::from));
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = r.next_page_token;
        }
    }

    pub(crate) async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        let req = pb::StopSandboxRequest { id: id.into(), grace_ms: Some(grace.as_millis() as u64) };
        let r = self.grpc().stop_sandbox(req).await.map_err(|s| self.error(s, id))?;
        Ok(r.into_inner().into())
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<()> {
        self.grpc().delete_sandbox(pb::DeleteSandboxRequest { id: id.into() }).await.map_err(|s| self.error(s, id))?;
        Ok(())
    }

    pub(crate) async fn read_file_to(
        &self,
        id: &str,
        path: &str,
        sink: &mut (impl tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let req = pb::ReadFileRequest { sandbox_id: id.into(), path: path.into() };
        let mut stream = self.grpc().read_file(req).await.map_err(|s| self.error(s, id))?.into_inner();
        let mut n = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|s| self.error(s, id))? {
            sink.write_all(&chunk.data).await.map_err(|e| crate::client::local(path, e))?;
            n += chunk.data.len() as u64;
        }
        sink.flush().await.map_err(|e| crate::client::local(path, e))?;
        Ok(n)
    }

    /// Streams `len` bytes of `source` as the request stream, read while the call runs (memory: a few
    /// chunks in flight).
    pub(crate) async fn write_file_from(
        &self,
        id: &str,
        path: &str,
        len: u64,
        mode: u32,
        source: &mut (impl tokio::io::AsyncRead + Unpin + Send),
    ) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = pb::WriteFileRequest {
            sandbox_id: id.into(),
            path: path.into(),
            mode,
            size: Some(len),
            ..Default::default()
        };
        let _ = tx.send(first).await;
        let pump = async move {
            let mut left = len;
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = (left as usize).min(buf.len());
                let n = source.read(&mut buf[..want]).await.map_err(|e| crate::client::local(path, e))?;
                if n == 0 {
                    return Err(crate::client::local(
                        path,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("the data ended after {} of {len} bytes", len - left),
                        ),
                    ));
                }
                let msg = pb::WriteFileRequest { data: Bytes::copy_from_slice(&buf[..n]), ..Default::default() };
                if tx.send(msg).await.is_err() {
                    break; // the call ended first; its answer says why
                }
                left -= n as u64;
            }
            Ok(())
        };
        let mut grpc = self.grpc();
        let call = grpc.write_file(tokio_stream::wrappers::ReceiverStream::new(rx));
        let (pumped, answered) = tokio::join!(pump, call);
        // Our own reader failing explains the server's refusal of the short stream, not the other way round.
        pumped?;
        answered.map_err(|s| self.error(s, id))?;
        Ok(())
    }

    /// Starts (or finds) an exec and follows it, resuming on new connections whenever one breaks.
    pub(crate) async fn exec(
        &self,
        id: &str,
        mut spec: ExecSpec,
        input: Option<Vec<u8>>,
        keepalive: Option<Duration>,
    ) -> Result<RemoteExec> {
        let ka = keepalive.map(|d| d.as_millis().max(1) as u64).unwrap_or(0);
        // Always an id, so that a start whose answer was lost can be sent again without running twice.
        spec.id = Some(spec.id.unwrap_or_else(fresh_exec_id));
        let exec = self.follow(id, In::Init(convert::exec_init(id, spec, ka)), [0, 0], ka).await?;
        if let Some(data) = input {
            exec.stdin.push(&data, true);
        }
        Ok(exec)
    }

    /// Follows an existing exec from `from` (stdout, stderr offsets).
    pub(crate) async fn attach(
        &self,
        id: &str,
        exec: &str,
        from: [u64; 2],
        keepalive: Option<Duration>,
    ) -> Result<RemoteExec> {
        let ka = keepalive.map(|d| d.as_millis().max(1) as u64).unwrap_or(0);
        self.follow(id, attach_msg(id, exec, from, ka), from, ka).await
    }

    async fn follow(&self, id: &str, first: In, from: [u64; 2], keepalive_ms: u64) -> Result<RemoteExec> {
        // Starting and attaching are idempotent (the exec has an id), so a broken connection is retried.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut backoff = Duration::from_millis(20);
        let (conn, ready) = loop {
            match self.open_exec(id, first.clone()).await {
                Err(Error::Connection(_)) if tokio::time::Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => break other?,
            }
        };
        let stdin = Arc::new(StdinBuffer::new(ready.stdin_acked));
        let (ev_tx, events) = tokio::sync::mpsc::channel(4);
        let driver = Driver {
            remote: self.clone(),
            sandbox: id.to_string(),
            exec: ready.exec_id.clone(),
            pos: from,
            keepalive_ms,
            stdin: stdin.clone(),
            events: ev_tx,
        };
        let task = tokio::spawn(driver.run(conn, ready.stdin_acked));
        Ok(RemoteExec { exec: ready.exec_id, events, stdin, task })
    }

    /// One StreamExec call: sends `first`, waits for `ready`.
    async fn open_exec(&self, id: &str, first: In) -> Result<(Connection, pb::Ready)> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let _ = tx.send(pb::StreamExecRequest { msg: Some(first) }).await;
        let mut stream = self
            .grpc()
            .stream_exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| self.error(s, id))?
            .into_inner();
        // The server answers `ready` once the exec is found or started, or an error status.
        match stream.message().await {
            Ok(Some(pb::StreamExecResponse { msg: Some(Out::Ready(r)) })) => Ok((Connection { stream, tx }, r)),
            Ok(other) => Err(Error::Internal(format!("server {}: expected ready, got {other:?}", self.url))),
            Err(s) => Err(self.error(s, id)),
        }
    }

    pub(crate) async fn execs(&self, id: &str) -> Result<Vec<ExecInfo>> {
        let req = pb::ListExecsRequest { sandbox_id: id.into() };
        let r = self.grpc().list_execs(req).await.map_err(|s| self.error(s, id))?.into_inner();
        Ok(r.execs.into_iter().map(ExecInfo::from).collect())
    }

    pub(crate) async fn signal_exec(&self, id: &str, exec: &str, signal: i32) -> Result<()> {
        let req = pb::SignalExecRequest { sandbox_id: id.into(), exec_id: exec.into(), signal };
        self.grpc().signal_exec(req).await.map_err(|s| self.error(s, id))?;
        Ok(())
    }

    pub(crate) fn error(&self, s: Status, id: &str) -> Error {
        let meta = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let message = s.message().to_string();
        let file = |kind: FileErrorKind| Error::File {
            path: meta(PATH_KEY).unwrap_or_default(),
            kind,
            message: message.clone(),
        };
        match meta(REASON_KEY).as_deref().and_then(Reason::parse) {
            Some(Reason::File(kind)) => file(kind),
            Some(Reason::NotFound) => Error::NotFound { id: id.to_string() },
            Some(Reason::NotRunning) => Error::NotRunning {
                id: id.to_string(),
                state: meta(STATE_KEY).as_deref().and_then(SandboxState::parse).unwrap_or(SandboxState::Failed),
            },
            Some(Reason::InvalidArgument) => Error::InvalidArgument(message),
            Some(Reason::CommandNotFound) => Error::CommandNotFound { message },
            Some(Reason::StartFailed) => Error::StartFailed { message },
            Some(Reason::SandboxFailed) => Error::SandboxFailed { message },
            Some(Reason::SandboxGone) => Error::SandboxTerminated { id: id.to_string(), detail: message },
            Some(Reason::ExecNotFound) => Error::ExecNotFound { message },
            Some(Reason::ExecExpired) => Error::ExecExpired { message },
            Some(Reason::Unauthenticated) => Error::Unauthenticated(format!("server {}: {message}", self.url)),
            Some(Reason::Internal) | None => match s.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown if !id.is_empty() => {
                    Error::Connection(format!("server {} (sandbox {id}): {message}", self.url))
                }
                tonic::Code::Unavailable => Error::Connection(format!("server {}: {message}", self.url)),
                tonic::Code::Unauthenticated => Error::Unauthenticated(format!("server {}: {message}", self.url)),
                code => Error::Internal(format!("server {}: {code:?}: {message}", self.url)),
            },
        }
    }
}

/// An exec id unique to this process and moment: `ex-` and 16 hex digits.
fn fresh_exec_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mixed = (t as u64) ^ (u64::from(std::process::id()) << 40) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("ex-{mixed:016x}")
}

fn attach_msg(id: &str, exec: &str, from: [u64; 2], keepalive_ms: u64) -> In {
    In::Attach(pb::Attach {
        sandbox_id: id.into(),
        exec_id: exec.into(),
        stdout_offset: from[0],
        stderr_offset: from[1],
        keepalive_ms,
    })
}

struct Connection {
    stream: tonic::Streaming<pb::StreamExecResponse>,
    tx: tokio::sync::mpsc::Sender<pb::StreamExecRequest>,
}

/// stdin bytes not yet acknowledged by the exec, so they can be sent again on a new connection.
pub(crate) struct StdinBuffer {
    state: std::sync::Mutex<StdinState>,
    /// Bumped whenever there is something new to send.
    version: tokio::sync::watch::Sender<u64>,
    acked: tokio::sync::watch::Sender<u64>,
}

struct StdinState {
    /// Stream offset of `buf[0]`.
    base: u64,
    buf: std::collections::VecDeque<u8>,
    closing: bool,
    /// Terminal size to send (the latest wins).
    resize: Option<(u16, u16)>,
}

impl StdinBuffer {
    fn new(acked: u64) -> Self {
        Self {
            state: std::sync::Mutex::new(StdinState {
                base: acked,
                buf: Default::default(),
                closing: false,
                resize: None,
            }),
            version: tokio::sync::watch::channel(0).0,
            acked: tokio::sync::watch::channel(acked).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StdinState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues bytes (and, with `close`, the end of file) for sending.
    pub(crate) fn push(&self, data: &[u8], close: bool) {
        let mut st = self.lock();
        st.buf.extend(data);
        st.closing |= close;
        drop(st);
        self.version.send_modify(|v| *v += 1);
    }

    /// Queues a terminal resize.
    pub(crate) fn resize(&self, rows: u16, cols: u16) {
        self.lock().resize = Some((rows, cols));
        self.version.send_modify(|v| *v += 1);
    }

    /// Bytes queued but not yet acknowledged.
    pub(crate) fn unacked(&self) -> u64 {
        self.lock().buf.len() as u64
    }

    /// Waits until fewer than `window` bytes are unacknowledged.
    pub(crate) async fn wait_below(&self, window: u64) {
        let mut rx = self.acked.subscribe();
        while self.unacked() >= window {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn ack(&self, offset: u64) {
        let mut st = self.lock();
        if offset > st.base {
            let n = ((offset - st.base) as usize).min(st.buf.len());
            st.buf.drain(..n);
            st.base += n as u64;
        }
        drop(st);
        self.acked.send_replace(offset);
    }

    /// The next piece to send from `at` on: data, or the end of file once everything is sent.
    fn next_piece(&self, at: u64) -> Option<(u64, Option<Bytes>)> {
        let st = self.lock();
        let at = at.max(st.base);
        let end = st.base + st.buf.len() as u64;
        if at < end {
            let from = (at - st.base) as usize;
            let to = (from + CHUNK).min(st.buf.len());
            return Some((at, Some(st.buf.range(from..to).copied().collect::<Vec<u8>>().into())));
        }
        st.closing.then_some((at, None))
    }
}

/// Sends queued stdin on one connection, from the exec's acknowledged offset on, in order.
async fn stdin_pump(tx: tokio::sync::mpsc::Sender<pb::StreamExecRequest>, stdin: Arc<StdinBuffer>, mut at: u64) {
    let mut version = stdin.version.subscribe();
    loop {
        version.borrow_and_update();
        let resize = stdin.lock().resize.take();
        if let Some((rows, cols)) = resize {
            let msg = In::Resize(pb::Resize { rows: rows.into(), cols: cols.into() });
            if tx.send(pb::StreamExecRequest { msg: Some(msg) }).await.is_err() {
                return;
            }
        }
        match stdin.next_piece(at) {
            Some((offset, Some(data))) => {
                at = offset + data.len() as u64;
                let chunk = In::Stdin(pb::StdinChunk { offset, data });
                if tx.send(pb::StreamExecRequest { msg: Some(chunk) }).await.is_err() {
                    return;
                }
            }
            Some((_, None)) => {
                let _ = tx.send(pb::StreamExecRequest { msg: Some(In::Close(pb::Close {})) }).await;
                // Keep the request stream open: its end would look like a client that left.
                return std::future::pending().await;
            }
            None => {
                if version.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How long a broken exec stream keeps trying to resume before it reports the connection lost.
const RESUME_WINDOW: Duration = Duration::from_secs(120);

/// Follows one exec for a [`RemoteExec`]: forwards its events, feeds its stdin, and whenever the stream
/// breaks (connection lost, server restarted, nothing heard for three keepalive periods) attaches again at
/// the offsets received so far.
struct Driver {
    remote: Remote,
    sandbox: String,
    exec: String,
    pos: [u64; 2],
    keepalive_ms: u64,
    stdin: Arc<StdinBuffer>,
    events: tokio::sync::mpsc::Sender<Result<ExecEvent>>,
}

impl Driver {
    async fn run(mut self, mut conn: Connection, acked: u64) {
        let mut pump = AbortOnDrop(tokio::spawn(stdin_pump(conn.tx.clone(), self.stdin.clone(), acked)));
        let keepalive =
            if self.keepalive_ms == 0 { Duration::from_secs(15) } else { Duration::from_millis(self.keepalive_ms) };
        let idle = keepalive * 3 + Duration::from_secs(1);
        loop {
            let broken = match tokio::time::timeout(idle, conn.stream.message()).await {
                Ok(Ok(Some(m))) => match self.on_frame(m.msg).await {
                    Some(true) => continue,
                    Some(false) => return,
                    None => unreachable!(),
                },
                Ok(Ok(None)) => "the server's stream ended before the command did".to_string(),
                // An answer of the server's (it names a reason) is final; anything else is the transport.
                Ok(Err(s)) if s.metadata().get(REASON_KEY).is_some() => {
                    let _ = self.events.send(Err(self.remote.error(s, &self.sandbox))).await;
                    return;
                }
                Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
                Err(_) => format!("nothing heard for {idle:?}"),
            };
            drop(pump);
            drop(conn);
            match self.resume(&broken).await {
                Ok((c, ready)) => {
                    self.stdin.ack(ready.stdin_acked);
                    pump = AbortOnDrop(tokio::spawn(stdin_pump(c.tx.clone(), self.stdin.clone(), ready.stdin_acked)));
                    conn = c;
                }
                Err(e) => {
                    let _ = self.events.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    /// Handles one frame: `Some(true)` to go on, `Some(false)` when the exec's stream is over. Output is
    /// passed on from where this client stands: a frame that starts before it (replayed after a resume) is
    /// trimmed; one that starts after it is passed on as is, and the handle reports the hole exactly as the
    /// embedded engine would ([`Error::IncompleteOutput`]).
    async fn on_frame(&mut self, msg: Option<Out>) -> Option<bool> {
        let ev = match msg {
            Some(Out::StdinAck(a)) => {
                self.stdin.ack(a.offset);
                return Some(true);
            }
            Some(Out::Error(e)) => {
                let mut s = Status::internal(e.message);
                if let Ok(v) = e.reason.parse() {
                    s.metadata_mut().insert(REASON_KEY, v);
                }
                let _ = self.events.send(Err(self.remote.error(s, &self.sandbox))).await;
                return Some(false);
            }
            Some(m) => match convert::exec_event(&m) {
                Some(ev) => ev,
                None => return Some(true), // ready, keepalive
            },
            None => return Some(true),
        };
        let ev = match ev {
            ExecEvent::Output { stream, offset, data } => {
                let i = stream.index();
                let end = offset + data.len() as u64;
                if end <= self.pos[i] {
                    return Some(true); // already delivered
                }
                let skip = self.pos[i].saturating_sub(offset);
                self.pos[i] = end;
                ExecEvent::Output { stream, offset: offset + skip, data: data.slice(skip as usize..) }
            }
            ExecEvent::Gap { stream, from, to } => {
                self.pos[stream.index()] = self.pos[stream.index()].max(to);
                ExecEvent::Gap { stream, from, to }
            }
            ExecEvent::Exit(end) => {
                let _ = self.events.send(Ok(ExecEvent::Exit(end))).await;
                return Some(false);
            }
        };
        Some(self.events.send(Ok(ev)).await.is_ok())
    }

    async fn resume(&self, why: &str) -> Result<(Connection, pb::Ready)> {
        let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
        let mut backoff = Duration::from_millis(20);
        loop {
            let first = attach_msg(&self.sandbox, &self.exec, self.pos, self.keepalive_ms);
            match self.remote.open_exec(&self.sandbox, first).await {
                Ok(c) => return Ok(c),
                Err(e @ (Error::Connection(_) | Error::Internal(_))) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(Error::Connection(format!(
                            "exec {} in sandbox {}: stream broke ({why}) and could not resume within {RESUME_WINDOW:?}: {e}",
                            self.exec, self.sandbox
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An exec followed through a server.
pub(crate) struct RemoteExec {
    pub(crate) exec: String,
    events: tokio::sync::mpsc::Receiver<Result<ExecEvent>>,
    pub(crate) stdin: Arc<StdinBuffer>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteExec {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RemoteExec {
    pub(crate) async fn next(&mut self) -> Result<Option<ExecEvent>> {
        self.events.recv().await.transpose()
    }
}
