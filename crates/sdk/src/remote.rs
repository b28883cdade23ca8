//! The SDK against a Hangar server: `hangar.v1` over one HTTP/2 channel, errors mapped back to the same
//! typed errors as the embedded engine gives.

use crate::{Error, Result, SandboxInfo, SandboxState};
use bytes::Bytes;
use hangar_engine::{ExecEvent, ExecExit, ExecSpec, OutputStream, SandboxConfig};
use hangar_proto::v1 as pb;
use pb::sandbox_service_client::SandboxServiceClient;
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
        let req = pb::CreateSandboxRequest {
            request_id: c.request_id.unwrap_or_default(),
            image: c.image,
            command: c.command,
            env: c.env.into_iter().collect(),
            tags: c.tags.into_iter().collect(),
            workdir: c.workdir.unwrap_or_default(),
            cpus: c.cpus,
            memory_bytes: c.memory_bytes,
            pids: c.pids,
            max_lifetime_ms: Some(c.max_lifetime.as_millis() as u64),
        };
        let r = self.grpc().create_sandbox(req).await.map_err(|s| self.error(s, ""))?;
        Ok(from_proto(r.into_inner()))
    }

    pub(crate) async fn get(&self, id: &str) -> Result<SandboxInfo> {
        let r =
            self.grpc().get_sandbox(pb::GetSandboxRequest { id: id.into() }).await.map_err(|s| self.error(s, id))?;
        Ok(from_proto(r.into_inner()))
    }

    pub(crate) async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let mut out = vec![];
        let mut page_token = String::new();
        loop {
            let req = pb::ListSandboxesRequest { page_size: 1000, page_token, ..Default::default() };
            let r = self.grpc().list_sandboxes(req).await.map_err(|s| self.error(s, ""))?.into_inner();
            out.extend(r.sandboxes.into_iter().map(from_proto));
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = r.next_page_token;
        }
    }

    pub(crate) async fn stop(&self, id: &str, grace: Duration) -> Result<SandboxInfo> {
        let req = pb::StopSandboxRequest { id: id.into(), grace_ms: Some(grace.as_millis() as u64) };
        let r = self.grpc().stop_sandbox(req).await.map_err(|s| self.error(s, id))?;
        Ok(from_proto(r.into_inner()))
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<()> {
        self.grpc().delete_sandbox(pb::DeleteSandboxRequest { id: id.into() }).await.map_err(|s| self.error(s, id))?;
        Ok(())
    }

    pub(crate) async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        let req = pb::ReadFileRequest { sandbox_id: id.into(), path: path.into() };
        let mut stream = self.grpc().read_file(req).await.map_err(|s| self.error(s, id))?.into_inner();
        let mut data = vec![];
        while let Some(chunk) = stream.message().await.map_err(|s| self.error(s, id))? {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    pub(crate) async fn write_file(&self, id: &str, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut msgs =
            vec![pb::WriteFileRequest { sandbox_id: id.into(), path: path.into(), mode, data: Bytes::new() }];
        let data = Bytes::copy_from_slice(data);
        msgs.extend(chunks(&data).map(|c| pb::WriteFileRequest { data: c, ..Default::default() }));
        self.grpc().write_file(tokio_stream::iter(msgs)).await.map_err(|s| self.error(s, id))?;
        Ok(())
    }

    pub(crate) async fn exec(&self, id: &str, spec: ExecSpec) -> Result<RemoteExec> {
        use pb::stream_exec_request::Msg as In;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let init = pb::ExecInit {
            sandbox_id: id.into(),
            argv: spec.argv,
            env: spec.env.into_iter().collect(),
            cwd: spec.cwd.unwrap_or_default(),
            timeout_ms: spec.timeout.map(|t| t.as_millis().max(1) as u64),
            tty: false,
            stdin: spec.stdin.is_some(),
        };
        let msg = |m| pb::StreamExecRequest { msg: Some(m) };
        let _ = tx.send(msg(In::Init(init))).await;
        // Feed stdin at the pace the server takes it; closing is end of file. Without stdin the request
        // stream simply stays open until the exec ends (dropping it would not kill anything either).
        let feeder = tokio::spawn(async move {
            if let Some(data) = spec.stdin {
                for c in chunks(&Bytes::from(data)) {
                    if tx.send(msg(In::Stdin(c))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(msg(In::Close(pb::Close {}))).await;
            }
            tx.closed().await;
        });
        let resp = self.grpc().stream_exec(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
        let mut stream = match resp {
            Ok(r) => r.into_inner(),
            Err(s) => {
                feeder.abort();
                return Err(self.error(s, id));
            }
        };
        // The server answers `ready` once the command has started, or an error status.
        match stream.message().await {
            Ok(Some(pb::StreamExecResponse { msg: Some(pb::stream_exec_response::Msg::Ready(_)) })) => {}
            Ok(other) => {
                feeder.abort();
                return Err(Error::Internal(format!("server {}: expected ready, got {other:?}", self.url)));
            }
            Err(s) => {
                feeder.abort();
                return Err(self.error(s, id));
            }
        }
        Ok(RemoteExec { stream, remote: self.clone(), id: id.to_string(), offsets: [0, 0], feeder, done: false })
    }

    /// Maps a status back to the typed error the embedded engine would have given.
    pub(crate) fn error(&self, s: Status, id: &str) -> Error {
        let meta = |k: &str| s.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let message = s.message().to_string();
        let file = |kind| Error::File { path: meta("hangar-path").unwrap_or_default(), kind, message: message.clone() };
        match meta("hangar-reason").as_deref() {
            Some("NOT_FOUND") => Error::NotFound { id: id.to_string() },
            Some("NOT_RUNNING") => Error::NotRunning {
                id: id.to_string(),
                state: SandboxState::parse(&meta("hangar-state").unwrap_or_default()),
            },
            Some("INVALID_ARGUMENT") => Error::InvalidArgument(message),
            Some("COMMAND_NOT_FOUND") => Error::CommandNotFound { message },
            Some("FILE_NOT_FOUND") => file(crate::FileErrorKind::NotFound),
            Some("PERMISSION_DENIED") => file(crate::FileErrorKind::PermissionDenied),
            Some("IS_A_DIRECTORY") => file(crate::FileErrorKind::IsADirectory),
            Some("FILE_ERROR") => file(crate::FileErrorKind::Other),
            Some("SANDBOX_FAILED") => Error::SandboxFailed { message },
            Some("SANDBOX_GONE") => Error::SandboxTerminated { id: id.to_string(), detail: message },
            Some("UNAUTHENTICATED") => Error::Unauthenticated(format!("server {}: {message}", self.url)),
            _ => match s.code() {
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

/// An exec running on a server; dropping it cancels the exec there.
pub(crate) struct RemoteExec {
    stream: tonic::Streaming<pb::StreamExecResponse>,
    remote: Remote,
    id: String,
    offsets: [u64; 2],
    feeder: tokio::task::JoinHandle<()>,
    done: bool,
}

impl Drop for RemoteExec {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

impl RemoteExec {
    /// The next event, checked: offsets must follow on, and the exit's byte totals must match what arrived,
    /// so a stream that broke or lost bytes is never taken for a finished command.
    pub(crate) async fn next(&mut self) -> Result<Option<ExecEvent>> {
        use pb::stream_exec_response::Msg as Out;
        if self.done {
            return Ok(None);
        }
        let broken = |detail: String| Error::SandboxTerminated { id: self.id.clone(), detail };
        let msg = match self.stream.message().await {
            Ok(Some(m)) => m.msg,
            Ok(None) => {
                self.done = true;
                return Err(broken("the server's stream ended before the command did".into()));
            }
            Err(s) => {
                self.done = true;
                return Err(self.remote.error(s, &self.id));
            }
        };
        match msg {
            Some(Out::Output(o)) => {
                let (i, stream) = if o.stream == pb::OutputStream::Stderr as i32 {
                    (1, OutputStream::Stderr)
                } else {
                    (0, OutputStream::Stdout)
                };
                if o.offset != self.offsets[i] {
                    self.done = true;
                    return Err(broken(format!("{stream:?} bytes {}..{} never arrived", self.offsets[i], o.offset)));
                }
                self.offsets[i] += o.data.len() as u64;
                Ok(Some(ExecEvent::Output { stream, offset: o.offset, data: o.data }))
            }
            Some(Out::Exit(x)) => {
                self.done = true;
                if [x.stdout_bytes, x.stderr_bytes] != self.offsets {
                    return Err(broken(format!(
                        "the command wrote {}+{} bytes but {}+{} arrived",
                        x.stdout_bytes, x.stderr_bytes, self.offsets[0], self.offsets[1]
                    )));
                }
                let reason = pb::ExitReason::try_from(x.reason).unwrap_or(pb::ExitReason::Exited);
                Ok(Some(ExecEvent::Exit(ExecExit {
                    code: x.code,
                    signal: x.signal,
                    timed_out: reason == pb::ExitReason::TimedOut,
                    cancelled: reason == pb::ExitReason::Cancelled,
                    stdout_bytes: x.stdout_bytes,
                    stderr_bytes: x.stderr_bytes,
                })))
            }
            Some(Out::Error(e)) => {
                self.done = true;
                let mut s = Status::internal(e.message);
                if let Ok(v) = e.reason.parse() {
                    s.metadata_mut().insert("hangar-reason", v);
                }
                Err(self.remote.error(s, &self.id))
            }
            Some(Out::Ready(_)) | None => Box::pin(self.next()).await,
        }
    }
}

/// `data` in message-sized pieces, without copying.
fn chunks(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..data.len()).step_by(CHUNK).map(move |at| data.slice(at..data.len().min(at + CHUNK)))
}

fn from_proto(s: pb::Sandbox) -> SandboxInfo {
    SandboxInfo {
        id: s.id,
        state: SandboxState::parse(&s.state),
        image: s.image,
        command: s.command,
        tags: s.tags.into_iter().collect(),
        cpus: s.cpus,
        memory_bytes: s.memory_bytes,
        pids: s.pids,
        max_lifetime_ms: s.max_lifetime_ms,
        created_at_ms: s.created_at_ms,
        ended_at_ms: s.ended_at_ms,
        exit_code: s.exit_code,
        exit_signal: s.exit_signal,
        end_reason: (!s.end_reason.is_empty()).then_some(s.end_reason),
        error: (!s.error.is_empty()).then_some(s.error),
        tenant: String::new(),
        progress: (!s.progress.is_empty()).then_some(s.progress),
    }
}
