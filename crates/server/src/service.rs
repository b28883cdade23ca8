//! `hangar.v1.SandboxService` over the engine.

use crate::status::{from_engine, invalid, refused};
use crate::stream::{client_messages, client_pipes, forward_events, keepalive, RESTART_HOLD, STREAM_BUFFER};
use crate::{Metrics, Tenant};
use hangar_engine::{Engine, ExecSpec, ExecStream, OutputStream, SandboxConfig, SandboxInfo, SandboxState};
use hangar_proto::v1 as pb;
use pb::sandbox_service_server::SandboxService;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

const FILE_CHUNK: usize = 1 << 20;
const DEFAULT_OUTPUT_CAP: u64 = 16 << 20;
const MAX_OUTPUT_CAP: u64 = 1 << 30;
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// The service implementation.
pub struct SandboxApi {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

impl SandboxApi {
    /// Serves `engine`, counting into `metrics`.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        Self { engine, metrics }
    }

    async fn owned(&self, tenant: &Tenant, id: &str) -> Result<SandboxInfo, Status> {
        owned(&self.engine, tenant, id).await
    }
}

/// The sandbox, if it belongs to `tenant`; another tenant's id is answered exactly like an unknown one (by
/// both APIs the server speaks).
pub(crate) async fn owned(engine: &Engine, tenant: &Tenant, id: &str) -> Result<SandboxInfo, Status> {
    if id.is_empty() {
        return Err(invalid("sandbox_id", "is empty"));
    }
    match engine.get(id).await {
        Ok(info) if info.tenant == tenant.0 => Ok(info),
        Ok(_) => Err(from_engine(hangar_engine::Error::NotFound(id.to_string()))),
        Err(e) => Err(from_engine(e)),
    }
}

/// A list request's page, the same rule for both APIs: (items to skip, page size). The token is the offset
/// a previous page returned; a size of 0 is the default.
pub(crate) fn page(size: i64, token: &str) -> Result<(usize, usize), Status> {
    let page = match size {
        0 => DEFAULT_PAGE,
        n if n < 0 || n > MAX_PAGE as i64 => return Err(invalid("page_size", format!("is not in 1..={MAX_PAGE}"))),
        n => n as usize,
    };
    let skip = match token {
        "" => 0,
        t => t.parse::<usize>().map_err(|_| invalid("page_token", "is not a token from a previous page"))?,
    };
    Ok((skip, page))
}

/// The token of the page after `skip + page` of `total` items (empty on the last page).
pub(crate) fn next_token(skip: usize, page: usize, total: usize) -> String {
    if skip + page < total {
        (skip + page).to_string()
    } else {
        String::new()
    }
}

/// The tenant the auth interceptor found for this call (both APIs).
pub(crate) fn tenant<T>(req: &Request<T>) -> Result<Tenant, Status> {
    req.extensions().get::<Tenant>().cloned().ok_or_else(|| Status::unauthenticated("no tenant"))
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SandboxService for SandboxApi {
    async fn create_sandbox(&self, req: Request<pb::CreateSandboxRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        let cfg = SandboxConfig { tenant: tenant.0, ..SandboxConfig::try_from(req.into_inner()).map_err(refused)? };
        let t = Instant::now();
        let info = self.engine.create(cfg).await.map_err(from_engine)?;
        self.metrics.create_seconds.observe(t.elapsed());
        tracing::info!(sandbox = %info.id, tenant = %info.tenant, "created");
        Ok(Response::new(info.into()))
    }

    async fn get_sandbox(&self, req: Request<pb::GetSandboxRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        Ok(Response::new(self.owned(&tenant, &req.get_ref().id).await?.into()))
    }

    async fn list_sandboxes(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let state = match r.state.as_str() {
            "" => None,
            s => Some(SandboxState::parse(s).ok_or_else(|| invalid("state", format!("{s:?} is not a sandbox state")))?),
        };
        let (skip, page) = page(i64::from(r.page_size), &r.page_token)?;
        let all = self.engine.list().await.map_err(from_engine)?;
        let matching: Vec<_> = all
            .into_iter()
            .filter(|i| i.tenant == tenant.0)
            .filter(|i| state.is_none_or(|s| i.state == s))
            .filter(|i| r.tags.iter().all(|(k, v)| i.tags.get(k) == Some(v)))
            .collect();
        let next = next_token(skip, page, matching.len());
        let sandboxes = matching.into_iter().skip(skip).take(page).map(Into::into).collect();
        Ok(Response::new(pb::ListSandboxesResponse { sandboxes, next_page_token: next }))
    }

    async fn stop_sandbox(&self, req: Request<pb::StopSandboxRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.owned(&tenant, &r.id).await?;
        let grace = r.grace_ms.map(Duration::from_millis).unwrap_or(hangar_engine::DEFAULT_STOP_GRACE);
        if grace > hangar_types::MAX_STOP_GRACE {
            return Err(invalid("grace_ms", "exceeds one hour"));
        }
        Ok(Response::new(self.engine.stop(&r.id, grace).await.map_err(from_engine)?.into()))
    }

    async fn set_network(&self, req: Request<pb::SetNetworkRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.owned(&tenant, &r.id).await?;
        let policy = hangar_proto::convert::network_policy(r.network.unwrap_or_default()).map_err(refused)?;
        let policy = policy.ok_or_else(|| invalid("network", "a policy is required (mode egress, or none)"))?;
        Ok(Response::new(self.engine.set_network(&r.id, policy).await.map_err(from_engine)?.into()))
    }

    type ForwardPortStream = BoxStream<pb::PortData>;

    async fn forward_port(
        &self,
        req: Request<Streaming<pb::PortData>>,
    ) -> Result<Response<Self::ForwardPortStream>, Status> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tenant = tenant(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| invalid("sandbox_id", "the stream ended before it"))?;
        self.owned(&tenant, &first.sandbox_id).await?;
        let port = u16::try_from(first.port).map_err(|_| invalid("port", format!("{} is not a port", first.port)))?;
        let at = self.engine.publish_port(&first.sandbox_id, port).await.map_err(from_engine)?;
        let conn = tokio::net::TcpStream::connect(at)
            .await
            .map_err(|e| Status::unavailable(format!("port {port} of sandbox {}: {e}", first.sandbox_id)))?;
        let (mut from_sandbox, mut to_sandbox) = conn.into_split();
        tokio::spawn(async move {
            let mut data = first.data;
            loop {
                if !data.is_empty() && to_sandbox.write_all(&data).await.is_err() {
                    return;
                }
                match inbound.message().await {
                    Ok(Some(m)) => data = m.data,
                    _ => return drop(to_sandbox.shutdown().await),
                }
            }
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = from_sandbox.read(&mut buf).await {
                let msg = pb::PortData { data: bytes::Bytes::copy_from_slice(&buf[..n]), ..Default::default() };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn delete_sandbox(
        &self,
        req: Request<pb::DeleteSandboxRequest>,
    ) -> Result<Response<pb::DeleteSandboxResponse>, Status> {
        let tenant = tenant(&req)?;
        let id = &req.get_ref().id;
        self.owned(&tenant, id).await?;
        self.engine.remove(id).await.map_err(from_engine)?;
        Ok(Response::new(pb::DeleteSandboxResponse {}))
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Result<Response<pb::ExecResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let cap = match r.output_cap_bytes {
            0 => DEFAULT_OUTPUT_CAP,
            c if c > MAX_OUTPUT_CAP => return Err(invalid("output_cap_bytes", format!("exceeds {MAX_OUTPUT_CAP}"))),
            c => c,
        };
        self.owned(&tenant, &r.sandbox_id).await?;
        let spec = ExecSpec::from(&r);
        let started = Instant::now();
        let mut stream = self.start(&r.sandbox_id, spec, r.stdin.map(Vec::from)).await?;
        let m = &self.metrics;
        let counted = |which: OutputStream, n: usize| {
            let counter = if which == OutputStream::Stdout { &m.stdout_bytes } else { &m.stderr_bytes };
            counter.fetch_add(n as u64, Relaxed);
        };
        let c = crate::stream::collect(&mut stream, cap as usize, counted).await.map_err(from_engine)?;
        if let Some(e) = hangar_engine::Error::from_start_failure(&r.sandbox_id, &c.end.ending) {
            self.metrics.execs_failed_to_start.fetch_add(1, Relaxed);
            return Err(from_engine(e));
        }
        let [stdout, stderr] = c.out;
        let resp = pb::ExecResponse {
            stdout: stdout.into(),
            stderr: stderr.into(),
            stdout_truncated: c.truncated[0],
            stderr_truncated: c.truncated[1],
            exit: Some((&c.end).into()),
        };
        self.metrics.exec_seconds.observe(started.elapsed());
        Ok(Response::new(resp))
    }

    type ReadFileStream = BoxStream<pb::FileChunk>;

    async fn read_file(&self, req: Request<pb::ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.owned(&tenant, &r.sandbox_id).await?;
        let mut file = self.engine.open_file(&r.sandbox_id, &r.path).await.map_err(from_engine)?;
        // A few chunks in flight: the server's memory stays the same for a 10 GiB file as for a small one.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if file.is_empty() {
                let _ = tx.send(Ok(pb::FileChunk { data: bytes::Bytes::new() })).await;
            }
            loop {
                let msg = match file.next_chunk().await {
                    Ok(Some(chunk)) => Ok(pb::FileChunk { data: chunk.into() }),
                    Ok(None) => return,
                    Err(e) => Err(from_engine(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn write_file(
        &self,
        req: Request<Streaming<pb::WriteFileRequest>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let tenant = tenant(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| invalid("write_file", "no message"))?;
        if first.path.is_empty() {
            return Err(invalid("path", "is empty"));
        }
        self.owned(&tenant, &first.sandbox_id).await?;
        let mode = if first.mode == 0 { 0o644 } else { first.mode & 0o7777 };
        let limit = self.engine.config().max_file_bytes;
        let (id, path) = (first.sandbox_id.clone(), first.path.clone());
        let too_large = |n: u64| {
            from_engine(hangar_engine::Error::File {
                id: id.clone(),
                path: path.clone(),
                kind: hangar_engine::FileErrorKind::TooLarge,
                message: format!("{path}: {n} bytes exceeds the {limit}-byte transfer limit"),
            })
        };
        let written = match first.size {
            Some(size) => {
                if size > limit {
                    return Err(too_large(size));
                }
                // Straight through: the request stream feeds a pipe the engine reads from.
                let (mut pipe_w, mut pipe_r) = tokio::io::duplex(FILE_CHUNK * 2);
                let feed = async move {
                    use tokio::io::AsyncWriteExt;
                    let mut n = 0u64;
                    let mut chunk = Some(first.data);
                    while let Some(data) = chunk {
                        n += data.len() as u64;
                        if n > size {
                            return Err(invalid("data", format!("more than the {size} bytes announced in size")));
                        }
                        if pipe_w.write_all(&data).await.is_err() {
                            break; // the engine stopped reading; its answer says why
                        }
                        chunk = inbound.message().await?.map(|m| m.data);
                    }
                    Ok::<u64, Status>(n)
                };
                let write = self.engine.write_file_from(&id, &path, size, mode, &mut pipe_r);
                let (fed, wrote) = tokio::join!(feed, write);
                let n = fed?;
                wrote.map_err(from_engine)?;
                n
            }
            None => {
                // No size given: spool to the server's disk (bounded memory), then stream from there.
                let spool = spool_file(&self.engine.config().state_dir)
                    .map_err(|e| Status::internal(format!("spooling the upload: {e}")))?;
                let mut file = tokio::fs::File::from_std(spool);
                let mut n = 0u64;
                let mut chunk = first.data;
                loop {
                    use tokio::io::AsyncWriteExt;
                    n += chunk.len() as u64;
                    if n > limit {
                        return Err(too_large(n));
                    }
                    file.write_all(&chunk).await.map_err(|e| Status::internal(format!("spooling the upload: {e}")))?;
                    match inbound.message().await? {
                        Some(m) => chunk = m.data,
                        None => break,
                    }
                }
                use tokio::io::AsyncSeekExt;
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| Status::internal(e.to_string()))?;
                self.engine.write_file_from(&id, &path, n, mode, &mut file).await.map_err(from_engine)?;
                n
            }
        };
        Ok(Response::new(pb::WriteFileResponse { bytes_written: written }))
    }

    type StreamExecStream = BoxStream<pb::StreamExecResponse>;

    async fn stream_exec(
        &self,
        req: Request<Streaming<pb::StreamExecRequest>>,
    ) -> Result<Response<Self::StreamExecStream>, Status> {
        use pb::stream_exec_request::Msg as In;
        use pb::stream_exec_response::Msg as Out;
        let tenant = tenant(&req)?;
        // A client on this machine (the Unix socket) is known by its pid: it may have output go through its pipes.
        let peer = req.extensions().get::<UdsConnectInfo>().and_then(|c| c.peer_cred).and_then(|c| c.pid());
        let mut inbound = req.into_inner();
        let (first, asked) = match inbound.message().await? {
            Some(m) => (m.msg, m.pipes),
            None => (None, None),
        };
        let (sandbox, stream, keepalive) = match first {
            Some(In::Init(init)) => {
                self.owned(&tenant, &init.sandbox_id).await?;
                let (sandbox, keepalive) = (init.sandbox_id.clone(), keepalive(init.keepalive_ms));
                let spec = ExecSpec::try_from(init).map_err(refused)?;
                (sandbox.clone(), self.start(&sandbox, spec, None).await?, keepalive)
            }
            Some(In::Attach(a)) => {
                self.owned(&tenant, &a.sandbox_id).await?;
                if a.exec_id.is_empty() {
                    return Err(invalid("exec_id", "is empty"));
                }
                let from = [a.stdout_offset, a.stderr_offset];
                let mut stream = self.engine.attach(&a.sandbox_id, &a.exec_id, from).await.map_err(from_engine)?;
                if let Some(lines) = a.tail_lines {
                    stream.seek_tail(lines).await.map_err(from_engine)?;
                }
                if let Some(ms) = a.since_ms {
                    stream.seek_since(ms).await.map_err(from_engine)?;
                }
                self.metrics.exec_attaches.fetch_add(1, Relaxed);
                (a.sandbox_id, stream, keepalive(a.keepalive_ms))
            }
            _ => return Err(invalid("init", "the first message of a stream must be init or attach")),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::StreamExecResponse, Status>>(STREAM_BUFFER);
        let out = |m: Out| Ok(pb::StreamExecResponse { msg: Some(m) });
        let pipes = client_pipes(peer, asked);
        let info = stream.info();
        let ready = pb::Ready {
            exec_id: info.id.clone(),
            stdin_acked: info.stdin_acked,
            stdin_open: info.stdin_open,
            tty: info.tty,
            merged: info.merged,
            stdout_offset: stream.position()[0],
            stderr_offset: stream.position()[1],
            stdout_written: info.written[0],
            stderr_written: info.written[1],
            ended: info.end.is_some(),
            piped: pipes.is_some(),
        };
        let exec_id = info.id.clone();
        // Best effort: an agent that cannot take it applies the client's policy as it always did.
        let _ = stream.control().hold_across_restarts(RESTART_HOLD).await;
        let _ = tx.send(out(Out::Ready(ready))).await;
        // Client messages flow on their own task, so a command blocked on a full stdin never stalls output.
        tokio::spawn(client_messages(self.engine.clone(), sandbox, exec_id, inbound, stream.control(), tx.clone()));
        tokio::spawn(forward_events(stream, tx, keepalive, self.metrics.clone(), pipes));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_execs(&self, req: Request<pb::ListExecsRequest>) -> Result<Response<pb::ListExecsResponse>, Status> {
        let tenant = tenant(&req)?;
        let id = &req.get_ref().sandbox_id;
        self.owned(&tenant, id).await?;
        let execs = self.engine.execs(id).await.map_err(from_engine)?;
        Ok(Response::new(pb::ListExecsResponse { execs: execs.into_iter().map(Into::into).collect() }))
    }

    async fn signal_exec(
        &self,
        req: Request<pb::SignalExecRequest>,
    ) -> Result<Response<pb::SignalExecResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.owned(&tenant, &r.sandbox_id).await?;
        if r.exec_id.is_empty() {
            return Err(invalid("exec_id", "is empty"));
        }
        self.engine.signal_exec(&r.sandbox_id, &r.exec_id, r.signal).await.map_err(from_engine)?;
        Ok(Response::new(pb::SignalExecResponse {}))
    }
}

impl SandboxApi {
    /// Starts an exec (feeding it `input`, when given), counting it.
    async fn start(&self, sandbox: &str, spec: ExecSpec, input: Option<Vec<u8>>) -> Result<ExecStream, Status> {
        let started = match input {
            Some(data) => self.engine.exec_with_input(sandbox, spec, data).await,
            None => self.engine.exec(sandbox, spec).await,
        };
        let stream = started.map_err(|e| {
            self.metrics.execs_failed_to_start.fetch_add(1, Relaxed);
            from_engine(e)
        })?;
        self.metrics.execs_started.fetch_add(1, Relaxed);
        Ok(stream)
    }
}

/// A file for an upload spooled to the server's disk while it arrives, unlinked at once (so nothing is left
/// whatever happens to the call or the server). The directory is under the 0700 state directory.
fn spool_file(state_dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = state_dir.join("uploads");
    std::fs::create_dir_all(&dir)?;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("upload-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}
