//! `hangar.v1.SandboxService` over the engine.

use crate::status::{from_engine, invalid};
use crate::{Metrics, Tenant};
use hangar_engine::{Engine, ExecEvent, ExecExit, ExecSpec, OutputStream, SandboxConfig, SandboxInfo, SandboxState};
use hangar_proto::v1 as pb;
use pb::sandbox_service_server::SandboxService;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const FILE_CHUNK: usize = 1 << 20;
const DEFAULT_OUTPUT_CAP: u64 = 16 << 20;
const MAX_OUTPUT_CAP: u64 = 1 << 30;
const MAX_PAGE: u32 = 1000;
const MAX_LIFETIME_MS: u64 = 30 * 24 * 3600 * 1000;
/// Output events buffered per stream before the exec's pipes stop being read (backpressure).
const STREAM_BUFFER: usize = 16;

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

    /// The sandbox, if it belongs to `tenant`; another tenant's id is answered exactly like an unknown one.
    async fn owned(&self, tenant: &Tenant, id: &str) -> Result<SandboxInfo, Status> {
        if id.is_empty() {
            return Err(invalid("sandbox_id", "is empty"));
        }
        match self.engine.get(id).await {
            Ok(info) if info.tenant == tenant.0 => Ok(info),
            Ok(_) => Err(from_engine(hangar_engine::Error::NotFound(id.to_string()))),
            Err(e) => Err(from_engine(e)),
        }
    }
}

fn tenant<T>(req: &Request<T>) -> Result<Tenant, Status> {
    req.extensions().get::<Tenant>().cloned().ok_or_else(|| Status::unauthenticated("no tenant"))
}

pub(crate) fn to_proto(i: SandboxInfo) -> pb::Sandbox {
    pb::Sandbox {
        id: i.id,
        state: i.state.as_str().into(),
        image: i.image,
        command: i.command,
        tags: i.tags.into_iter().collect(),
        cpus: i.cpus,
        memory_bytes: i.memory_bytes,
        pids: i.pids,
        max_lifetime_ms: i.max_lifetime_ms,
        created_at_ms: i.created_at_ms,
        ended_at_ms: i.ended_at_ms,
        exit_code: i.exit_code,
        exit_signal: i.exit_signal,
        end_reason: i.end_reason.unwrap_or_default(),
        error: i.error.unwrap_or_default(),
        progress: i.progress.unwrap_or_default(),
    }
}

fn exec_spec(
    argv: Vec<String>,
    env: std::collections::HashMap<String, String>,
    cwd: String,
    timeout_ms: Option<u64>,
) -> Result<ExecSpec, Status> {
    if argv.is_empty() {
        return Err(invalid("argv", "the command is empty"));
    }
    if timeout_ms == Some(0) {
        return Err(invalid("timeout_ms", "must be positive"));
    }
    Ok(ExecSpec {
        argv,
        env: env.into_iter().collect(),
        cwd: (!cwd.is_empty()).then_some(cwd),
        timeout: timeout_ms.map(Duration::from_millis),
        ..ExecSpec::default()
    })
}

pub(crate) fn exit_to_proto(x: &ExecExit) -> pb::Exit {
    let reason = if x.timed_out {
        pb::ExitReason::TimedOut
    } else if x.cancelled {
        pb::ExitReason::Cancelled
    } else if x.signal.is_some() {
        pb::ExitReason::Signaled
    } else {
        pb::ExitReason::Exited
    };
    pb::Exit {
        reason: reason as i32,
        code: x.code,
        signal: x.signal,
        stdout_bytes: x.stdout_bytes,
        stderr_bytes: x.stderr_bytes,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SandboxService for SandboxApi {
    async fn create_sandbox(&self, req: Request<pb::CreateSandboxRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if r.max_lifetime_ms.is_some_and(|ms| ms == 0 || ms > MAX_LIFETIME_MS) {
            return Err(invalid("max_lifetime_ms", format!("must be between 1 and {MAX_LIFETIME_MS}")));
        }
        if r.memory_bytes.is_some_and(|m| m > 1 << 40) {
            return Err(invalid("memory_bytes", "exceeds 1 TiB"));
        }
        if r.cpus.is_some_and(|c| c > 1024.0) {
            return Err(invalid("cpus", "exceeds 1024"));
        }
        if r.request_id.len() > 256 {
            return Err(invalid("request_id", "exceeds 256 bytes"));
        }
        let mut cfg = SandboxConfig::default();
        if !r.image.is_empty() {
            cfg.image = r.image;
        }
        if !r.command.is_empty() {
            cfg.command = r.command;
        }
        cfg.env = r.env.into_iter().collect();
        cfg.env.sort();
        cfg.tags = r.tags.into_iter().collect();
        cfg.workdir = (!r.workdir.is_empty()).then_some(r.workdir);
        cfg.cpus = r.cpus;
        cfg.memory_bytes = r.memory_bytes;
        cfg.pids = r.pids;
        if let Some(ms) = r.max_lifetime_ms {
            cfg.max_lifetime = Duration::from_millis(ms);
        }
        cfg.tenant = tenant.0;
        cfg.request_id = (!r.request_id.is_empty()).then_some(r.request_id);
        let t = Instant::now();
        let info = self.engine.create(cfg).await.map_err(from_engine)?;
        self.metrics.create_seconds.observe(t.elapsed());
        tracing::info!(sandbox = %info.id, tenant = %info.tenant, "created");
        Ok(Response::new(to_proto(info)))
    }

    async fn get_sandbox(&self, req: Request<pb::GetSandboxRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        Ok(Response::new(to_proto(self.owned(&tenant, &req.get_ref().id).await?)))
    }

    async fn list_sandboxes(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let state = match r.state.as_str() {
            "" => None,
            s => Some(
                [
                    SandboxState::Pulling,
                    SandboxState::Creating,
                    SandboxState::Running,
                    SandboxState::Completed,
                    SandboxState::Failed,
                    SandboxState::Terminated,
                ]
                .into_iter()
                .find(|st| st.as_str() == s)
                .ok_or_else(|| invalid("state", format!("{s:?} is not a sandbox state")))?,
            ),
        };
        let page = match r.page_size {
            0 => 100,
            n if n > MAX_PAGE => return Err(invalid("page_size", format!("exceeds {MAX_PAGE}"))),
            n => n as usize,
        };
        let skip = match r.page_token.as_str() {
            "" => 0,
            t => t.parse::<usize>().map_err(|_| invalid("page_token", "is not a token from a previous page"))?,
        };
        let all = self.engine.list().await.map_err(from_engine)?;
        let matching: Vec<_> = all
            .into_iter()
            .filter(|i| i.tenant == tenant.0)
            .filter(|i| state.is_none_or(|s| i.state == s))
            .filter(|i| r.tags.iter().all(|(k, v)| i.tags.get(k) == Some(v)))
            .collect();
        let next = if skip + page < matching.len() { (skip + page).to_string() } else { String::new() };
        let sandboxes = matching.into_iter().skip(skip).take(page).map(to_proto).collect();
        Ok(Response::new(pb::ListSandboxesResponse { sandboxes, next_page_token: next }))
    }

    async fn stop_sandbox(&self, req: Request<pb::StopSandboxRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.owned(&tenant, &r.id).await?;
        let grace = r.grace_ms.map(Duration::from_millis).unwrap_or(hangar_engine::DEFAULT_STOP_GRACE);
        if grace > Duration::from_secs(3600) {
            return Err(invalid("grace_ms", "exceeds one hour"));
        }
        Ok(Response::new(to_proto(self.engine.stop(&r.id, grace).await.map_err(from_engine)?)))
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
        let mut spec = exec_spec(r.argv, r.env, r.cwd, r.timeout_ms)?;
        spec.stdin = r.stdin.map(Vec::from);
        let started = Instant::now();
        let mut stream = self.engine.exec(&r.sandbox_id, spec).await.map_err(|e| {
            self.metrics.execs_failed_to_start.fetch_add(1, Relaxed);
            from_engine(e)
        })?;
        self.metrics.execs_started.fetch_add(1, Relaxed);
        let mut resp = pb::ExecResponse::default();
        let mut out = [Vec::new(), Vec::new()];
        while let Some(ev) = stream.next().await.map_err(from_engine)? {
            match ev {
                ExecEvent::Output { stream: which, data, .. } => {
                    let [stdout, stderr] = &mut out;
                    let (buf, truncated, counter) = match which {
                        OutputStream::Stdout => (stdout, &mut resp.stdout_truncated, &self.metrics.stdout_bytes),
                        OutputStream::Stderr => (stderr, &mut resp.stderr_truncated, &self.metrics.stderr_bytes),
                    };
                    counter.fetch_add(data.len() as u64, Relaxed);
                    let room = (cap as usize).saturating_sub(buf.len());
                    if data.len() > room {
                        *truncated = true;
                    }
                    buf.extend_from_slice(&data[..data.len().min(room)]);
                }
                ExecEvent::Exit(x) => resp.exit = Some(exit_to_proto(&x)),
            }
        }
        self.metrics.exec_seconds.observe(started.elapsed());
        let [stdout, stderr] = out;
        (resp.stdout, resp.stderr) = (stdout.into(), stderr.into());
        Ok(Response::new(resp))
    }

    type ReadFileStream = BoxStream<pb::FileChunk>;

    async fn read_file(&self, req: Request<pb::ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        self.owned(&tenant, &r.sandbox_id).await?;
        let data = self.engine.read_file(&r.sandbox_id, &r.path).await.map_err(from_engine)?;
        let data = bytes::Bytes::from(data);
        let chunks: Vec<Result<pb::FileChunk, Status>> = if data.is_empty() {
            vec![Ok(pb::FileChunk { data })]
        } else {
            (0..data.len())
                .step_by(FILE_CHUNK)
                .map(|at| Ok(pb::FileChunk { data: data.slice(at..data.len().min(at + FILE_CHUNK)) }))
                .collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
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
        let mut data = Vec::from(first.data);
        while let Some(m) = inbound.message().await? {
            if data.len() as u64 + m.data.len() as u64 > hangar_engine::MAX_FILE_BYTES {
                return Err(invalid("data", format!("exceeds {} bytes", hangar_engine::MAX_FILE_BYTES)));
            }
            data.extend_from_slice(&m.data);
        }
        let mode = if first.mode == 0 { 0o644 } else { first.mode & 0o7777 };
        self.engine.write_file(&first.sandbox_id, &first.path, &data, mode).await.map_err(from_engine)?;
        Ok(Response::new(pb::WriteFileResponse { bytes_written: data.len() as u64 }))
    }

    type StreamExecStream = BoxStream<pb::StreamExecResponse>;

    async fn stream_exec(
        &self,
        req: Request<Streaming<pb::StreamExecRequest>>,
    ) -> Result<Response<Self::StreamExecStream>, Status> {
        use pb::stream_exec_request::Msg as In;
        use pb::stream_exec_response::Msg as Out;
        let tenant = tenant(&req)?;
        let mut inbound = req.into_inner();
        let init = match inbound.message().await?.and_then(|m| m.msg) {
            Some(In::Init(i)) => i,
            _ => return Err(invalid("init", "the first message of a stream must be init")),
        };
        if init.tty {
            return Err(crate::status::with_reason(
                Status::unimplemented("tty: PTY execs are not supported yet"),
                "UNIMPLEMENTED",
            ));
        }
        self.owned(&tenant, &init.sandbox_id).await?;
        let mut spec = exec_spec(init.argv, init.env, init.cwd, init.timeout_ms)?;
        spec.stdin_pipe = init.stdin;
        let mut exec = self.engine.exec(&init.sandbox_id, spec).await.map_err(|e| {
            self.metrics.execs_failed_to_start.fetch_add(1, Relaxed);
            from_engine(e)
        })?;
        self.metrics.execs_started.fetch_add(1, Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::StreamExecResponse, Status>>(STREAM_BUFFER);
        let out = |m: Out| Ok(pb::StreamExecResponse { msg: Some(m) });
        let _ = tx.send(out(Out::Ready(pb::Ready { exec_id: exec.id().to_string() }))).await;
        // stdin flows on its own task, so a process blocked on a full stdout pipe never stalls it.
        if let Some(mut stdin) = exec.take_stdin() {
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    match m.msg {
                        Some(In::Stdin(data)) if stdin.write_all(&data).await.is_err() => break,
                        Some(In::Close(_)) => break,
                        _ => {}
                    }
                }
            });
        }
        let metrics = self.metrics.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            loop {
                // A client that went away closes the channel; dropping `exec` then kills its process tree,
                // even while the command is quiet.
                let next = tokio::select! {
                    next = exec.next() => next,
                    _ = tx.closed() => return,
                };
                let msg = match next {
                    Ok(Some(ExecEvent::Output { stream, offset, data })) => {
                        let (s, counter) = match stream {
                            OutputStream::Stdout => (pb::OutputStream::Stdout, &metrics.stdout_bytes),
                            OutputStream::Stderr => (pb::OutputStream::Stderr, &metrics.stderr_bytes),
                        };
                        counter.fetch_add(data.len() as u64, Relaxed);
                        out(Out::Output(pb::Output { stream: s as i32, offset, data }))
                    }
                    Ok(Some(ExecEvent::Exit(x))) => {
                        metrics.exec_seconds.observe(started.elapsed());
                        let _ = tx.send(out(Out::Exit(exit_to_proto(&x)))).await;
                        return;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let st = from_engine(e);
                        let reason = st
                            .metadata()
                            .get(crate::REASON_KEY)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("INTERNAL")
                            .to_string();
                        let _ = tx.send(out(Out::Error(pb::Error { reason, message: st.message().to_string() }))).await;
                        return;
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
