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
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

mod stdin;
mod stream;

pub(crate) use stdin::StdinBuffer;
use stream::Driver;

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
    /// On the server's machine (a `unix:` URL): output may come through pipes of this process's.
    local: bool,
}

impl Remote {
    pub(crate) fn connect(url: &str, token: Option<&str>) -> Result<Self> {
        // The channel's connection task lives on the SDK's process-wide runtime, not the caller's, so the
        // client outlives any one runtime (tests, the blocking facade, programs with several runtimes).
        let _on_sdk_runtime = crate::blocking::shared_runtime()?.enter();
        // `unix:PATH` (or `unix:///PATH`): the server's Unix socket; the URL's authority is then unused.
        let socket = url.strip_prefix("unix:").map(|p| std::path::PathBuf::from(p.strip_prefix("//").unwrap_or(p)));
        let endpoint = if socket.is_some() { "http://localhost" } else { url };
        let endpoint = Channel::from_shared(endpoint.to_string())
            .map_err(|e| Error::InvalidArgument(format!("server url {url:?}: {e}")))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            // Let the server send output in large frames instead of HTTP/2's default 16 KiB.
            .max_frame_size(1 << 20)
            .keep_alive_while_idle(true);
        let channel = match socket.clone() {
            Some(path) => endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
            })),
            None => endpoint.connect_lazy(),
        };
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
        Ok(Self { grpc, url: url.to_string(), local: socket.is_some() })
    }

    fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }

    pub(crate) async fn create(&self, c: SandboxConfig) -> Result<SandboxInfo> {
        let r = self.grpc().create_sandbox(pb::CreateSandboxRequest::from(c)).await.map_err(|s| self.error(s, ""))?;
        Ok(r.into_inner().into())
    }

    pub(crate) async fn set_network(&self, id: &str, policy: hangar_types::NetworkPolicy) -> Result<SandboxInfo> {
        let req = pb::SetNetworkRequest { id: id.into(), network: Some(policy.into()) };
        let r = self.grpc().set_network(req).await.map_err(|s| self.error(s, id))?;
        Ok(r.into_inner().into())
    }

    /// A tunnel to port `port` of sandbox `id`: a listener on this machine's 127.0.0.1 whose every connection
    /// becomes one `ForwardPort` call (authenticated like any other), open while this process runs.
    pub(crate) async fn publish_port(&self, id: &str, port: u16) -> Result<std::net::SocketAddr> {
        self.get(id).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::LocalIo(format!("the tunnel's listener: {e}")))?;
        let address = listener.local_addr().map_err(|e| Error::LocalIo(format!("the tunnel's listener: {e}")))?;
        let (grpc, id) = (self.grpc(), id.to_string());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(tunnel(grpc.clone(), id.clone(), port, conn));
            }
        });
        Ok(address)
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
        let exec = self.follow(id, In::Init(convert::exec_init(id, spec, ka)), ka).await?;
        if let Some(data) = input {
            exec.stdin.push(&data, true);
        }
        Ok(exec)
    }

    /// Follows an existing exec from where `start` says.
    pub(crate) async fn attach(
        &self,
        id: &str,
        exec: &str,
        start: &crate::client::Start,
        keepalive: Option<Duration>,
    ) -> Result<RemoteExec> {
        let ka = keepalive.map(|d| d.as_millis().max(1) as u64).unwrap_or(0);
        let mut first = attach_msg(id, exec, start.from, ka);
        if let In::Attach(a) = &mut first {
            (a.tail_lines, a.since_ms) = (start.tail_lines, start.since_ms);
        }
        self.follow(id, first, ka).await
    }

    async fn follow(&self, id: &str, first: In, keepalive_ms: u64) -> Result<RemoteExec> {
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
        let start = [ready.stdout_offset, ready.stderr_offset];
        let journaled = ([ready.stdout_written, ready.stderr_written], ready.ended);
        let driver = Driver {
            remote: self.clone(),
            sandbox: id.to_string(),
            exec: ready.exec_id.clone(),
            pos: start,
            keepalive_ms,
            stdin: stdin.clone(),
            events: ev_tx,
        };
        let task = tokio::spawn(driver.run(conn, ready.stdin_acked));
        Ok(RemoteExec {
            exec: ready.exec_id,
            start,
            journaled,
            events,
            stdin,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    /// One StreamExec call: sends `first`, waits for `ready`. On the server's machine it asks for the output
    /// through two new pipes of this process's (`LocalPipes`), whose write ends it keeps only until then.
    async fn open_exec(&self, id: &str, first: In) -> Result<(Connection, pb::Ready)> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let ours = self.local.then(|| Some((pipe::pipe().ok()?, pipe::pipe().ok()?))).flatten();
        let pipes = ours
            .as_ref()
            .map(|((out, _), (err, _))| pb::LocalPipes { stdout_fd: out.as_raw_fd(), stderr_fd: err.as_raw_fd() });
        let _ = tx.send(pb::StreamExecRequest { msg: Some(first), pipes }).await;
        let mut stream = self
            .grpc()
            .stream_exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| self.error(s, id))?
            .into_inner();
        // The server answers `ready` once the exec is found or started, or an error status.
        match stream.message().await {
            Ok(Some(pb::StreamExecResponse { msg: Some(Out::Ready(r)) })) => {
                // The write ends close here: a server that goes mid-chunk leaves an end of file, not a wait.
                let pipes = ours.filter(|_| r.piped).map(|((_, out), (_, err))| [out, err]);
                Ok((Connection { stream, tx, pipes, buf: Default::default() }, r))
            }
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
        status_error(&self.url, s, id)
    }
}

/// The SDK error a server's status stands for (the same one the embedded engine gives for the same failure).
pub(crate) fn status_error(url: &str, s: Status, id: &str) -> Error {
    let meta = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let message = s.message().to_string();
    let file =
        |kind: FileErrorKind| Error::File { path: meta(PATH_KEY).unwrap_or_default(), kind, message: message.clone() };
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
        Some(Reason::Unauthenticated) => Error::Unauthenticated(format!("server {}: {message}", url)),
        Some(Reason::Internal) | None => match s.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown if !id.is_empty() => {
                Error::Connection(format!("server {} (sandbox {id}): {message}", url))
            }
            tonic::Code::Unavailable => Error::Connection(format!("server {}: {message}", url)),
            tonic::Code::Unauthenticated => Error::Unauthenticated(format!("server {}: {message}", url)),
            code => Error::Internal(format!("server {}: {code:?}: {message}", url)),
        },
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
        tail_lines: None,
        since_ms: None,
    })
}

struct Connection {
    stream: tonic::Streaming<pb::StreamExecResponse>,
    tx: tokio::sync::mpsc::Sender<pb::StreamExecRequest>,
    /// When the server took them (`Ready.piped`): the pipes (stdout's, stderr's) the output's bytes come in.
    pipes: Option<[pipe::Receiver; 2]>,
    /// What piped bytes are read into: its memory is used again once the chunks handed out are dropped.
    buf: bytes::BytesMut,
}

impl Connection {
    /// The next frame; a `Piped` one comes back as the `Output` it stands for, with its bytes read from the
    /// pipe. Bytes that do not all come (the server went) break the stream like a lost connection.
    async fn message(&mut self) -> std::result::Result<Option<pb::StreamExecResponse>, Status> {
        let m = self.stream.message().await?;
        let (Some(pb::StreamExecResponse { msg: Some(Out::Piped(p)) }), Some(pipes)) = (&m, self.pipes.as_mut()) else {
            return Ok(m);
        };
        let pipe = &mut pipes[convert::output_stream(p.stream).index()];
        let data = read_piped(pipe, &mut self.buf, p.len)
            .await
            .map_err(|e| Status::unavailable(format!("the output's pipe: {e}")))?;
        let output = pb::Output { stream: p.stream, offset: p.offset, data };
        Ok(Some(pb::StreamExecResponse { msg: Some(Out::Output(output)) }))
    }
}

/// Exactly `len` bytes from `pipe`, read into `buf`.
async fn read_piped(pipe: &mut pipe::Receiver, buf: &mut bytes::BytesMut, len: u64) -> std::io::Result<Bytes> {
    use bytes::BufMut;
    use tokio::io::AsyncReadExt;
    if len > MAX_MESSAGE as u64 {
        return Err(std::io::Error::other(format!("{len} bytes announced, more than a frame may hold")));
    }
    let len = len as usize;
    buf.clear();
    buf.reserve(len);
    while buf.len() < len {
        let room = len - buf.len();
        if pipe.read_buf(&mut (&mut *buf).limit(room)).await? == 0 {
            let msg = format!("ended after {} of {len} bytes", buf.len());
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, msg));
        }
    }
    Ok(buf.split().freeze())
}

/// An exec followed through a server.
pub(crate) struct RemoteExec {
    pub(crate) exec: String,
    /// Where its output starts (stdout, stderr).
    pub(crate) start: [u64; 2],
    /// Bytes journaled when it was attached, and whether it had ended then.
    pub(crate) journaled: ([u64; 2], bool),
    events: tokio::sync::mpsc::Receiver<Result<ExecEvent>>,
    pub(crate) stdin: Arc<StdinBuffer>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl RemoteExec {
    pub(crate) async fn next(&mut self) -> Result<Option<ExecEvent>> {
        self.events.recv().await.transpose()
    }
}

/// Carries one local connection through a `ForwardPort` call, both ways, until either side ends.
async fn tunnel(mut grpc: Grpc, sandbox_id: String, port: u16, conn: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = conn.into_split();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = pb::PortData { sandbox_id, port: port.into(), data: Default::default() };
    if tx.send(first).await.is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            let data = bytes::Bytes::copy_from_slice(&buf[..n]);
            if tx.send(pb::PortData { data, ..Default::default() }).await.is_err() {
                return;
            }
        }
    });
    let Ok(reply) = grpc.forward_port(tokio_stream::wrappers::ReceiverStream::new(rx)).await else { return };
    let mut inbound = reply.into_inner();
    while let Ok(Some(m)) = inbound.message().await {
        if wr.write_all(&m.data).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}
