//! `coreweave.sandbox.v1.SandboxService` (CoreWeave's sandbox API, what the `cwsandbox` client speaks) over
//! the same engine, tenants and tokens as `hangar.v1`: a translation of its messages onto the shared types,
//! nothing of its own. The lifecycle (create, get, list, delete), Exec, StreamExec, StreamLogs, ReadFile and
//! WriteFile are served; ConnectSandbox answers UNIMPLEMENTED, so clients use this gateway for data operations; the rest of
//! the service answers UNIMPLEMENTED naming the method, until it is built.
//!
//! Mapping decisions: tags are a list there and a map here: a tag `t` is the key `t` with an empty value, and a
//! map entry `k=v` is shown as the tag `k=v`. Resources are Kubernetes quantities (`hangar_types::quantity`):
//! the limit is enforced (a request alone counts as the limit). The container's `command` string and `args`
//! are the argv. An empty image is the engine's default.

use crate::service::{owned, tenant, BoxStream};
use crate::status::{from_engine, invalid};
use crate::Tenant;
use cw::sandbox_service_server::SandboxService;
use hangar_engine::{Engine, ExecEvent, ExecSpec, OutputStream, SandboxConfig, SandboxInfo, SandboxState};
use hangar_proto::coreweave as cw;
use hangar_types::{Ending, OnDisconnect, Output, MAIN_EXEC};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// Largest file ReadFile/WriteFile move: one message, as large as the client accepts.
pub(crate) const MAX_FILE: usize = 100 << 20;

/// A status carrying a `google.rpc.ErrorInfo` of CoreWeave's domain, which the client turns into its typed
/// exception (`CWSANDBOX_FILE_NOT_FOUND` → `SandboxFileError`, ...).
fn with_reason(code: tonic::Code, message: String, reason: &str, path: Option<&str>) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    // The client exposes ErrorInfo's metadata as `exc.metadata` (`filepath` for file errors).
    let metadata: std::collections::HashMap<String, String> =
        path.map(|p| ("filepath".to_string(), p.to_string())).into_iter().collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, "cwsandbox.com", metadata))
}

/// An engine error as this API spells it: the status `hangar.v1` gives it, with CoreWeave's reason where the
/// client has a typed exception for it.
fn cw_status(e: hangar_engine::Error) -> Status {
    use hangar_types::FileErrorKind as K;
    let path = match &e {
        hangar_engine::Error::File { path, .. } => Some(path.clone()),
        _ => None,
    };
    let reason = match &e {
        hangar_engine::Error::NotFound(_) => Some("CWSANDBOX_SANDBOX_NOT_FOUND"),
        hangar_engine::Error::File { kind, .. } => Some(match kind {
            K::NotFound => "CWSANDBOX_FILE_NOT_FOUND",
            K::IsADirectory => "CWSANDBOX_FILE_IS_DIRECTORY",
            K::PermissionDenied | K::NotAllowed => "CWSANDBOX_FILE_PERMISSION_DENIED",
            K::TooLarge => "CWSANDBOX_FILE_TOO_LARGE",
            K::NotARegularFile | K::NoSpace | K::Changed | K::Other => "CWSANDBOX_FILE_IO_FAILED",
        }),
        _ => None,
    };
    let status = from_engine(e);
    match reason {
        Some(r) => with_reason(status.code(), status.message().to_string(), r, path.as_deref()),
        None => status,
    }
}

fn one_container(name: &str) -> Result<(), Status> {
    match name {
        "" | "main" => Ok(()),
        other => Err(invalid("container", format!("{other:?}: a Hangar sandbox has one container, \"main\""))),
    }
}

/// The service implementation.
pub struct CoreWeaveApi {
    engine: Arc<Engine>,
}

impl CoreWeaveApi {
    /// Serves `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("coreweave.sandbox.v1.SandboxService/{method} is not implemented by Hangar yet"))
}

fn state(s: SandboxState) -> cw::State {
    match s {
        SandboxState::Pulling => cw::State::Preparing,
        SandboxState::Creating => cw::State::Creating,
        SandboxState::Running => cw::State::Running,
        SandboxState::Completed => cw::State::Completed,
        SandboxState::Failed => cw::State::Failed,
        SandboxState::Terminated => cw::State::Terminated,
    }
}

/// The Hangar states a `State` filter stands for (none for UNSPECIFIED: no filter).
fn states_of(s: cw::State) -> Option<Vec<SandboxState>> {
    Some(match s {
        cw::State::Unspecified => return None,
        cw::State::Creating | cw::State::Pending => vec![SandboxState::Creating],
        cw::State::Preparing => vec![SandboxState::Pulling],
        cw::State::Running => vec![SandboxState::Running],
        cw::State::Completed => vec![SandboxState::Completed],
        cw::State::Failed => vec![SandboxState::Failed],
        cw::State::Terminated => vec![SandboxState::Terminated],
        cw::State::Terminating | cw::State::Paused => vec![],
    })
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Tags as the list CoreWeave keeps: a bare tag is a key with an empty value.
fn tags_of(tags: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    tags.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect()
}

fn resources_of(info: &SandboxInfo) -> Option<cw::ResourceRequirements> {
    if info.cpus.is_none() && info.memory_bytes.is_none() {
        return None;
    }
    let r = cw::Resources {
        cpu: info.cpus.map(|c| format!("{}m", (c * 1000.0).round() as u64)).unwrap_or_default(),
        memory: info.memory_bytes.map(|b| b.to_string()).unwrap_or_default(),
        gpu: None,
    };
    Some(cw::ResourceRequirements { requests: Some(r.clone()), limits: Some(r) })
}

/// A sandbox record as CoreWeave's `Sandbox`: the spec echoed (the client reads its tags back from it) and
/// the status, with the exit code whenever the main command exited.
fn sandbox_of(info: SandboxInfo) -> cw::Sandbox {
    let container = cw::Container {
        name: "main".into(),
        image: info.image.clone(),
        command: info.command.first().cloned().unwrap_or_default(),
        args: info.command.iter().skip(1).cloned().collect(),
        resource_requirements: resources_of(&info),
        ..Default::default()
    };
    let reason = match (&info.error, info.exit_code, info.exit_signal) {
        (Some(e), _, _) => e.clone(),
        (None, Some(code), _) if info.state == SandboxState::Failed => {
            format!("the main command exited with code {code}")
        }
        (None, _, Some(sig)) if info.state == SandboxState::Failed => {
            format!("the main command was killed by signal {sig}")
        }
        _ => info.end_reason.clone().unwrap_or_default(),
    };
    let status = cw::SandboxStatus {
        state: state(info.state) as i32,
        state_reason: reason,
        create_time: Some(timestamp(info.created_at_ms)),
        start_time: (info.state != SandboxState::Pulling && info.state != SandboxState::Creating)
            .then(|| timestamp(info.created_at_ms)),
        end_time: info.ended_at_ms.map(timestamp),
        exit_code: info.exit_code,
        effective_max_lifetime_seconds: (info.max_lifetime_ms / 1000).min(i32::MAX as u64) as i32,
        effective_resource_requirements: resources_of(&info),
        container_statuses: vec![cw::ContainerStatus {
            name: "main".into(),
            state: state(info.state) as i32,
            exit_code: info.exit_code.unwrap_or_default(),
            restart_count: 0,
        }],
        runner_id: "hangar".into(),
        ..Default::default()
    };
    cw::Sandbox {
        sandbox_id: info.id.clone(),
        spec: Some(cw::SandboxSpec {
            containers: vec![container],
            max_lifetime_seconds: (info.max_lifetime_ms / 1000).min(i32::MAX as u64) as i32,
            tags: tags_of(&info.tags),
            ..Default::default()
        }),
        status: Some(status),
        ..Default::default()
    }
}

/// A CreateSandboxRequest as the shared configuration (validated by the engine like every other).
fn config_of(req: cw::CreateSandboxRequest, tenant: Tenant) -> Result<SandboxConfig, Status> {
    let spec = req.sandbox.and_then(|s| s.spec).ok_or_else(|| invalid("sandbox.spec", "is missing"))?;
    let mut containers = spec.containers;
    let main = match containers.iter().position(|c| c.primary == Some(true)) {
        Some(i) => containers.swap_remove(i),
        None if containers.len() == 1 => containers.remove(0),
        None if containers.is_empty() => return Err(invalid("sandbox.spec.containers", "is empty")),
        None => {
            return Err(invalid(
                "sandbox.spec.containers",
                "holds several containers and none is primary; Hangar runs one",
            ))
        }
    };
    if !spec.volumes.is_empty() || !spec.services.is_empty() {
        return Err(Status::unimplemented("volumes and services are not implemented by Hangar yet"));
    }
    let mut cfg = SandboxConfig { tenant: tenant.0, ..Default::default() };
    if !main.image.is_empty() {
        cfg.image = main.image;
    }
    if !main.command.is_empty() {
        cfg.command = std::iter::once(main.command).chain(main.args).collect();
    } else if !main.args.is_empty() {
        return Err(invalid("sandbox.spec.containers.args", "are given without a command; Hangar needs the command"));
    }
    cfg.env = main.environment_variables.into_iter().collect();
    cfg.env.sort();
    cfg.workdir = Some(main.working_dir).filter(|w| !w.is_empty());
    let rr = main.resource_requirements.unwrap_or_default();
    let res = [rr.limits, rr.requests, main.resources].into_iter().flatten();
    for r in res {
        if r.gpu.as_ref().is_some_and(|g| g.count > 0) {
            return Err(invalid("resources.gpu", "this Hangar has no GPUs to give"));
        }
        if cfg.cpus.is_none() && !r.cpu.is_empty() {
            cfg.cpus = Some(hangar_types::quantity::cpus("resources.cpu", &r.cpu).map_err(crate::status::refused)?);
        }
        if cfg.memory_bytes.is_none() && !r.memory.is_empty() {
            let b = hangar_types::quantity::bytes("resources.memory", &r.memory).map_err(crate::status::refused)?;
            cfg.memory_bytes = Some(b);
        }
    }
    cfg.tags = spec.tags.into_iter().map(|t| (t, String::new())).collect();
    cfg.tags.extend(spec.annotations);
    if spec.max_lifetime_seconds < 0 {
        return Err(invalid("sandbox.spec.max_lifetime_seconds", "is negative"));
    }
    if spec.max_lifetime_seconds > 0 {
        cfg.max_lifetime = Duration::from_secs(spec.max_lifetime_seconds as u64);
    }
    cfg.request_id = Some(req.request_id).filter(|r| !r.is_empty());
    cfg.network = spec.network.map(network_of).transpose()?.flatten();
    Ok(cfg)
}

/// CoreWeave's network options as a policy: `deny_egress` is loopback only; egress grants (CIDR blocks with
/// their exceptions, HTTPS host names, `any`) become an egress policy's allow- and deny-lists; no grant keeps
/// the server's default. Grants Hangar has no notion of (other sandboxes, cluster selectors) are refused.
/// Port filters are not kept: a granted destination is reachable on every port.
fn network_of(n: cw::NetworkOptions) -> Result<Option<hangar_types::NetworkPolicy>, Status> {
    use cw::egress_rule::Destination;
    use hangar_types::{NetTarget, NetworkMode, NetworkPolicy};
    if n.deny_egress == Some(true) {
        if !n.egress.is_empty() {
            return Err(invalid("network.deny_egress", "cannot be combined with egress rules"));
        }
        return Ok(Some(NetworkPolicy { mode: NetworkMode::None, ..Default::default() }));
    }
    if n.egress.is_empty() {
        return Ok(None);
    }
    let target = |t: &str| NetTarget::parse(t).map_err(crate::status::refused);
    let (mut p, mut any) = (NetworkPolicy::egress(), false);
    for rule in n.egress {
        match rule.destination {
            Some(Destination::Cidr(c)) => {
                p.allow.push(target(&c.cidr)?);
                for e in &c.except {
                    p.deny.push(target(e)?);
                }
            }
            Some(Destination::HttpsHostname(h)) => p.allow.push(target(&h)?),
            Some(Destination::Any(true)) => any = true,
            Some(Destination::Any(false)) | None => return Err(invalid("network.egress", "a rule has no destination")),
            Some(Destination::Tenant(_) | Destination::Selector(_)) => {
                return Err(Status::unimplemented(
                    "network.egress: tenant and selector grants are not implemented by Hangar",
                ))
            }
        }
    }
    if any {
        // Every public address: an empty allow-list. (Private ranges granted beside `any` stay refused, the
        // safe reading: Hangar's allow-list cannot say "everything public and also these".)
        p.allow.clear();
    }
    Ok(Some(p))
}

use cw::exec_stream_response::Message as Msg;

fn out(m: Msg) -> cw::ExecStreamResponse {
    cw::ExecStreamResponse { message: Some(m) }
}

fn error_frame(code: &str, message: String) -> cw::ExecStreamResponse {
    out(Msg::Error(cw::ExecStreamError { message, code: code.into() }))
}

/// The call's `grpc-timeout` (`30S`, `1500m`, ...): how long the client will wait.
fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client's stdin, resizes and end of file, into the exec.
async fn stdin_from(
    engine: Arc<Engine>,
    sandbox: String,
    exec: String,
    mut inbound: Streaming<cw::ExecStreamRequest>,
    control: hangar_engine::ExecControl,
) {
    use cw::exec_stream_request::Message as In;
    let mut writer = match engine.open_stdin(&sandbox, &exec, 0).await {
        Ok(w) => w,
        Err(e) => return tracing::debug!(%sandbox, %exec, error = %e, "stdin not writable"),
    };
    loop {
        match inbound.message().await {
            Ok(Some(cw::ExecStreamRequest { message: Some(In::Stdin(data)) })) => {
                if writer.write(writer.next_offset(), &data).await.is_err() {
                    return; // the command closed its stdin or ended
                }
            }
            Ok(Some(cw::ExecStreamRequest { message: Some(In::Resize(r)) })) => {
                let (rows, cols) = (r.height.min(u16::MAX as u32) as u16, r.width.min(u16::MAX as u32) as u16);
                let _ = control.resize(rows, cols).await;
            }
            Ok(Some(cw::ExecStreamRequest { message: Some(In::Init(_)) | None })) => {}
            // `close`, or the request stream's end however it ended: end of file.
            Ok(Some(_)) | Ok(None) | Err(_) => {
                let _ = writer.close().await;
                return;
            }
        }
    }
}

/// The exec's events to the client until its one `exit` (or an `error`). A client that leaves drops the
/// stream, which kills the exec (its policy, set above).
async fn events_to(
    stream: hangar_engine::ExecStream,
    tx: tokio::sync::mpsc::Sender<Result<cw::ExecStreamResponse, Status>>,
) {
    // The reader runs on its own task while this one watches the client.
    let (mut ev_rx, _reader) = crate::stream::read_ahead(stream);
    loop {
        let ev = tokio::select! {
            ev = ev_rx.recv() => ev,
            _ = tx.closed() => return,
        };
        let (frames, last) = match ev {
            Some(Ok(Some(ExecEvent::Output { stream, data, .. }))) => (vec![Ok(output(stream, data))], false),
            Some(Ok(Some(ExecEvent::Gap { stream, from, to }))) => {
                (vec![Ok(error_frame("STREAM_TRUNCATED", format!("{stream:?} bytes {from}..{to} were lost")))], true)
            }
            Some(Ok(Some(ExecEvent::Exit(end)))) => (exit_frames(&end), true),
            Some(Ok(None)) | None => {
                (vec![Ok(error_frame("STREAM_TRUNCATED", "the exec's stream ended without an exit".into()))], true)
            }
            Some(Err(e)) => (vec![Err(from_engine(e))], true),
        };
        for f in frames {
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

fn output(stream: OutputStream, data: bytes::Bytes) -> cw::ExecStreamResponse {
    use cw::exec_stream_output::Stream as S;
    let stream = match stream {
        OutputStream::Stdout => S::Stdout,
        OutputStream::Stderr => S::Stderr,
    };
    out(Msg::Output(cw::ExecStreamOutput { stream: stream as i32, data }))
}

/// How an exec's end reads to this API's clients: an exit with the code a shell would give, after a note on
/// stderr for a command that could not start (as a shell prints it, then 127); or a failure, as its in-band
/// error code and the status a unary call answers.
enum CwEnd {
    Exit { note: Option<String> },
    Failed { code: &'static str, status: Status },
}

fn cw_end(end: &hangar_types::ExecEnd) -> CwEnd {
    let failed = |code, status| CwEnd::Failed { code, status };
    match &end.ending {
        Ending::TimedOut => failed(
            "DEADLINE_EXCEEDED",
            Status::deadline_exceeded("the command's timeout (the call's deadline) passed; its tree was killed"),
        ),
        Ending::SandboxGone => failed("SANDBOX_GONE", Status::unavailable("the sandbox ended while the command ran")),
        Ending::FailedToStart(f) if f.kind.is_command_problem() => {
            CwEnd::Exit { note: Some(format!("{}\n", f.message)) }
        }
        Ending::FailedToStart(f) => failed("RESOURCE_EXHAUSTED", Status::resource_exhausted(f.message.clone())),
        _ => CwEnd::Exit { note: None },
    }
}

/// The end as StreamExec frames: one `exit` (after the note, if any), or an `error` frame — except a timeout,
/// which ends the call with DEADLINE_EXCEEDED, as the client's own deadline would.
fn exit_frames(end: &hangar_types::ExecEnd) -> Vec<Result<cw::ExecStreamResponse, Status>> {
    let exit = out(Msg::Exit(cw::ExecStreamExit {
        exit_code: end.shell_code() as i32,
        completed_time: Some(timestamp(hangar_types::now_ms())),
    }));
    match cw_end(end) {
        CwEnd::Exit { note: None } => vec![Ok(exit)],
        CwEnd::Exit { note: Some(n) } => vec![Ok(output(OutputStream::Stderr, n.into())), Ok(exit)],
        CwEnd::Failed { status, .. } if status.code() == tonic::Code::DeadlineExceeded => vec![Err(status)],
        CwEnd::Failed { code, status } => vec![Ok(error_frame(code, status.message().to_string()))],
    }
}

/// The log session of sandbox `id`: the sandbox's own, so that any server can resume it.
fn log_session(id: &str) -> String {
    format!("{id}/log")
}

fn log_error(code: &str, message: String) -> cw::LogEntry {
    cw::LogEntry { error: Some(cw::LogStreamError { message, code: code.into() }), ..Default::default() }
}

/// Prefixes each line that starts in `data` (at log offset `offset`) with the time it was written; `at_start`
/// says whether a line starts at `data`'s first byte, and is updated for the next chunk.
fn stamped(data: &[u8], offset: u64, times: &mut hangar_journal::Times, at_start: &mut bool) -> bytes::Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    for (k, &b) in data.iter().enumerate() {
        if *at_start {
            let ms = times.at(offset + k as u64).unwrap_or_else(hangar_types::now_ms);
            out.extend_from_slice(format!("{} ", timestamp(ms)).as_bytes());
        }
        out.push(b);
        *at_start = b == b'\n';
    }
    out.into()
}

/// The log's events as entries, until `until` (not following), the main command's end, or an error frame;
/// with `times`, its lines stamped.
async fn log_entries(
    stream: hangar_engine::ExecStream,
    tx: tokio::sync::mpsc::Sender<Result<cw::LogEntry, Status>>,
    session: String,
    until: Option<u64>,
    resume: bool,
    mut times: Option<hangar_journal::Times>,
) {
    let mut pos = stream.position()[0];
    let mut at_start = true;
    let (mut ev_rx, _reader) = crate::stream::read_ahead(stream);
    loop {
        if until.is_some_and(|u| pos >= u) {
            return;
        }
        let ev = tokio::select! {
            ev = ev_rx.recv() => ev,
            _ = tx.closed() => return,
        };
        let entry = match ev {
            Some(Ok(Some(ExecEvent::Output { offset, data, .. }))) => {
                pos = offset + data.len() as u64;
                let data = match times.as_mut() {
                    Some(t) => stamped(&data, offset, t, &mut at_start),
                    None => data,
                };
                let (log_session_id, next_log_offset) = (session.clone(), pos);
                Ok(cw::LogEntry { data, log_session_id, next_log_offset, ..Default::default() })
            }
            // Where a resume asked for bytes the cap dropped, the client starts afresh; any other loss ends it.
            Some(Ok(Some(ExecEvent::Gap { from, to, .. }))) if resume && from == pos => {
                Ok(log_error("REPLAY_GAP", format!("log bytes {from}..{to} were dropped by its cap")))
            }
            Some(Ok(Some(ExecEvent::Gap { from, to, .. }))) => {
                Ok(log_error("STREAM_TRUNCATED", format!("log bytes {from}..{to} were lost")))
            }
            Some(Ok(Some(ExecEvent::Exit(_)))) | Some(Ok(None)) | None => return,
            Some(Err(e)) => Err(cw_status(e)),
        };
        let last = !matches!(&entry, Ok(e) if e.error.is_none());
        if tx.send(entry).await.is_err() || last {
            return;
        }
    }
}

#[tonic::async_trait]
impl SandboxService for CoreWeaveApi {
    async fn create_sandbox(&self, req: Request<cw::CreateSandboxRequest>) -> Result<Response<cw::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        let cfg = config_of(req.into_inner(), tenant)?;
        let info = self.engine.create(cfg).await.map_err(cw_status)?;
        tracing::info!(sandbox = %info.id, tenant = %info.tenant, "created (coreweave.sandbox.v1)");
        Ok(Response::new(sandbox_of(info)))
    }

    async fn get_sandbox(&self, req: Request<cw::GetSandboxRequest>) -> Result<Response<cw::Sandbox>, Status> {
        let tenant = tenant(&req)?;
        Ok(Response::new(sandbox_of(owned(&self.engine, &tenant, &req.get_ref().sandbox_id).await?)))
    }

    async fn list_sandboxes(
        &self,
        req: Request<cw::ListSandboxesRequest>,
    ) -> Result<Response<cw::ListSandboxesResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if !r.runner_ids.is_empty() || !r.volume_ids.is_empty() {
            // Hangar has one runner and no volumes: nothing matches a filter on them but "hangar".
            if !r.runner_ids.iter().any(|id| id == "hangar") || !r.volume_ids.is_empty() {
                return Ok(Response::new(cw::ListSandboxesResponse::default()));
            }
        }
        let wanted = states_of(cw::State::try_from(r.state).map_err(|_| invalid("state", "is not a State"))?);
        // A terminal state asked for by name widens the list to ended sandboxes, as the client promises.
        let show_ended = r.show_terminated || wanted.as_ref().is_some_and(|w| w.iter().any(|s| s.is_final()));
        let (skip, page) = crate::service::page(i64::from(r.page_size), &r.page_token)?;
        let all = self.engine.list().await.map_err(cw_status)?;
        let mut matching: Vec<_> = all
            .into_iter()
            .filter(|i| i.tenant == tenant.0)
            .filter(|i| show_ended || !i.state.is_final())
            .filter(|i| wanted.as_ref().is_none_or(|w| w.contains(&i.state)))
            .filter(|i| r.tags.iter().all(|t| tags_of(&i.tags).contains(t)))
            .collect();
        if r.sort_direction == cw::SortDirection::Descending as i32 {
            matching.reverse();
        }
        let next = crate::service::next_token(skip, page, matching.len());
        let sandboxes = matching.into_iter().skip(skip).take(page).map(sandbox_of).collect();
        Ok(Response::new(cw::ListSandboxesResponse { sandboxes, next_page_token: next }))
    }

    /// What `stop()` sends: the sandbox is stopped and its record kept (the client then polls it to its end).
    async fn delete_sandbox(
        &self,
        req: Request<cw::DeleteSandboxRequest>,
    ) -> Result<Response<cw::DeleteSandboxResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if !r.snapshot_volumes.is_empty() {
            return Err(Status::unimplemented(
                "snapshot_volumes: file-system snapshots are not implemented by Hangar yet",
            ));
        }
        match owned(&self.engine, &tenant, &r.sandbox_id).await {
            Err(s) if s.code() == tonic::Code::NotFound && r.allow_missing => {
                return Ok(Response::new(cw::DeleteSandboxResponse::default()))
            }
            Err(s) => return Err(s),
            Ok(_) => {}
        }
        let grace = match r.grace_period_seconds {
            0 => hangar_engine::DEFAULT_STOP_GRACE,
            n if n < 0 => return Err(invalid("grace_period_seconds", "is negative")),
            n => Duration::from_secs(n as u64),
        };
        if grace > hangar_types::MAX_STOP_GRACE {
            return Err(invalid("grace_period_seconds", "exceeds one hour"));
        }
        let info = self.engine.stop(&r.sandbox_id, grace).await.map_err(cw_status)?;
        Ok(Response::new(cw::DeleteSandboxResponse {
            sandbox: Some(sandbox_of(info)),
            file_system_snapshot_ids: vec![],
        }))
    }

    /// Hangar has no direct data plane: UNIMPLEMENTED tells the client to use this gateway instead.
    async fn connect_sandbox(
        &self,
        _req: Request<cw::ConnectSandboxRequest>,
    ) -> Result<Response<cw::SandboxConnection>, Status> {
        Err(Status::unimplemented("Hangar has no direct data plane; use the gateway (this API) for data operations"))
    }

    async fn create_sandbox_from_template(
        &self,
        _req: Request<cw::CreateSandboxFromTemplateRequest>,
    ) -> Result<Response<cw::Sandbox>, Status> {
        Err(unimplemented("CreateSandboxFromTemplate"))
    }

    async fn create_sandbox_from_file(
        &self,
        _req: Request<cw::CreateSandboxFromFileRequest>,
    ) -> Result<Response<cw::Sandbox>, Status> {
        Err(unimplemented("CreateSandboxFromFile"))
    }

    async fn get_sandbox_build_logs(
        &self,
        _req: Request<cw::GetSandboxBuildLogsRequest>,
    ) -> Result<Response<cw::GetSandboxBuildLogsResponse>, Status> {
        Err(unimplemented("GetSandboxBuildLogs"))
    }

    async fn purge_sandboxes(
        &self,
        _req: Request<cw::PurgeSandboxesRequest>,
    ) -> Result<Response<cw::PurgeSandboxesResponse>, Status> {
        Err(unimplemented("PurgeSandboxes"))
    }

    /// A command run to its end: its output (each stream up to `max_output_bytes`, default 16 MiB) and the
    /// exit code a shell would give. The call's deadline is the command's timeout, as for StreamExec.
    async fn exec(&self, req: Request<cw::ExecRequest>) -> Result<Response<cw::ExecResponse>, Status> {
        let tenant = tenant(&req)?;
        let deadline = grpc_timeout(req.metadata());
        let r = req.into_inner();
        owned(&self.engine, &tenant, &r.sandbox_id).await?;
        one_container(&r.container)?;
        let cap = match r.max_output_bytes {
            0 => 16 << 20,
            n if n < 0 => return Err(invalid("max_output_bytes", "is negative")),
            n => n as usize,
        };
        let mut spec = ExecSpec::new(r.command);
        spec.env = r.env.into_iter().collect();
        spec.env.sort();
        // Ended just before the deadline, so that the answer (DEADLINE_EXCEEDED) is in before the call's own
        // timer cancels it (tonic answers a passed deadline with CANCELLED).
        spec.timeout =
            deadline.map(|d| d.saturating_sub((d / 10).min(Duration::from_millis(100))).max(Duration::from_millis(1)));
        spec.on_disconnect = OnDisconnect::Kill { grace_ms: 0 };
        let mut stream = self.engine.exec(&r.sandbox_id, spec).await.map_err(cw_status)?;
        let c = crate::stream::collect(&mut stream, cap, |_, _| ()).await.map_err(cw_status)?;
        let [stdout, mut stderr] = c.out;
        match cw_end(&c.end) {
            CwEnd::Exit { note: Some(n) } => stderr = n.into_bytes(),
            CwEnd::Exit { note: None } => {}
            CwEnd::Failed { status, .. } => return Err(status),
        }
        Ok(Response::new(cw::ExecResponse {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit_code: c.end.shell_code() as i32,
            stdout_truncated: c.truncated[0],
            stderr_truncated: c.truncated[1],
            stdout_bytes_produced: c.end.bytes[0] as i64,
            stderr_bytes_produced: c.end.bytes[1] as i64,
        }))
    }

    type StreamExecStream = BoxStream<cw::ExecStreamResponse>;

    /// An exec with live output: `init` starts it (stdin open; the end of the request stream, with or
    /// without `close`, is its end of file, since the client half-closes at once when it has no stdin), then
    /// `output` frames as the command writes, and exactly one `exit` — or an `error` frame naming what went
    /// wrong. The call's deadline is the command's timeout (the client kills nothing itself): a client that
    /// cancels, or whose deadline passes, takes the command's whole tree with it.
    async fn stream_exec(
        &self,
        req: Request<Streaming<cw::ExecStreamRequest>>,
    ) -> Result<Response<Self::StreamExecStream>, Status> {
        use cw::exec_stream_request::Message as In;
        let tenant = tenant(&req)?;
        let deadline = grpc_timeout(req.metadata());
        let mut inbound = req.into_inner();
        let init = match inbound.message().await?.and_then(|m| m.message) {
            Some(In::Init(init)) => init,
            _ => return Err(invalid("init", "the first message of a stream must be init")),
        };
        owned(&self.engine, &tenant, &init.sandbox_id).await?;
        one_container(&init.container)?;
        let mut spec = ExecSpec::new(init.command);
        spec.env = init.env.into_iter().collect();
        spec.env.sort();
        spec.stdin = true;
        if init.tty {
            let (rows, cols) = (init.tty_height.clamp(1, u16::MAX as u32), init.tty_width.clamp(1, u16::MAX as u32));
            let (rows, cols) = if init.tty_height == 0 { (24, 80) } else { (rows as u16, cols as u16) };
            spec.output = Output::Pty { rows, cols };
        }
        // The client's own deadline ends the call first (and with it the tree, below); this is the net.
        spec.timeout = deadline.map(|d| d + Duration::from_secs(2));
        spec.on_disconnect = OnDisconnect::Kill { grace_ms: 0 };
        let sandbox = init.sandbox_id;
        let stream = self.engine.exec(&sandbox, spec).await.map_err(cw_status)?;
        let exec = stream.info().id.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(crate::stream::STREAM_BUFFER);
        let ready = cw::ExecStreamReady { ready_time: Some(timestamp(hangar_types::now_ms())) };
        let _ = tx.send(Ok(out(Msg::Ready(ready)))).await;
        tokio::spawn(stdin_from(self.engine.clone(), sandbox, exec, inbound, stream.control()));
        tokio::spawn(events_to(stream, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type StreamLogsStream = BoxStream<cw::LogEntry>;

    /// The sandbox's log (its main command's stdout and stderr, in the order written) as `LogEntry` frames
    /// carrying a session id (the sandbox's: any replica can resume it) and the offset after each chunk. A
    /// fresh stream starts at the last `tail_lines` lines, or at the oldest byte after anything the log's cap
    /// dropped (like a rotated log), and not before `since_time`; a resume at its offset exactly. With
    /// `timestamps` each line starts with the time it was written (RFC 3339, to 10 ms) and a space. Without `follow` it ends at what was
    /// there when it opened; with it, when the main command ends. Ended sandboxes' logs are served too.
    async fn stream_logs(
        &self,
        req: Request<cw::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        owned(&self.engine, &tenant, &r.sandbox_id).await?;
        one_container(&r.container)?;
        let session = log_session(&r.sandbox_id);
        let (tx, rx) = tokio::sync::mpsc::channel(crate::stream::STREAM_BUFFER);
        let reply = |tx| Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(tx)) as BoxStream<_>));
        let resume = !r.resume_log_session_id.is_empty();
        if resume && r.resume_log_session_id != session {
            let message = format!("log session {:?} is not this sandbox's", r.resume_log_session_id);
            let _ = tx.send(Ok(log_error("SESSION_NOT_FOUND", message))).await;
            return reply(rx);
        }
        let from = if resume { r.resume_log_offset } else { 0 };
        let mut stream = self.engine.attach(&r.sandbox_id, MAIN_EXEC, [from, 0]).await.map_err(cw_status)?;
        let written = stream.info().written[0];
        if resume && from > written {
            let message = format!("offset {from} is past the {written} bytes the log has");
            let _ = tx.send(Ok(log_error("INVALID_RESUME_OFFSET", message))).await;
            return reply(rx);
        }
        if !resume {
            let lines = if r.tail_lines > 0 { r.tail_lines as u64 } else { u64::MAX };
            stream.seek_tail(lines).await.map_err(cw_status)?;
            if let Some(t) = &r.since_time {
                let ms = (t.seconds.max(0) as u64).saturating_mul(1000) + (t.nanos.max(0) as u64) / 1_000_000;
                stream.seek_since(ms).await.map_err(cw_status)?;
            }
        }
        let until = (!r.follow && stream.info().end.is_none()).then_some(written);
        let times = r.timestamps.then(|| stream.times());
        tokio::spawn(log_entries(stream, tx, session, until, resume, times));
        reply(rx)
    }

    /// The whole file in one message (the client's own limit is 100 MiB); parent directories are made.
    async fn write_file(&self, req: Request<cw::WriteFileRequest>) -> Result<Response<cw::WriteFileResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        owned(&self.engine, &tenant, &r.sandbox_id).await?;
        one_container(&r.container)?;
        self.engine.write_file(&r.sandbox_id, &r.path, &r.content, 0o644).await.map_err(cw_status)?;
        Ok(Response::new(cw::WriteFileResponse {}))
    }

    async fn read_file(&self, req: Request<cw::ReadFileRequest>) -> Result<Response<cw::ReadFileResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        owned(&self.engine, &tenant, &r.sandbox_id).await?;
        one_container(&r.container)?;
        let mut f = self.engine.open_file(&r.sandbox_id, &r.path).await.map_err(cw_status)?;
        if f.len() > MAX_FILE as u64 {
            let message = format!("{}: {} bytes is more than one message carries ({MAX_FILE})", r.path, f.len());
            return Err(with_reason(tonic::Code::OutOfRange, message, "CWSANDBOX_FILE_TOO_LARGE", Some(&r.path)));
        }
        let mut content = Vec::with_capacity(f.len() as usize);
        while let Some(chunk) = f.next_chunk().await.map_err(cw_status)? {
            content.extend_from_slice(&chunk);
        }
        Ok(Response::new(cw::ReadFileResponse { content: content.into() }))
    }

    async fn create_file_system_snapshot(
        &self,
        _req: Request<cw::CreateFileSystemSnapshotRequest>,
    ) -> Result<Response<cw::FileSystemSnapshot>, Status> {
        Err(unimplemented("CreateFileSystemSnapshot"))
    }

    async fn get_file_system_snapshot(
        &self,
        _req: Request<cw::GetFileSystemSnapshotRequest>,
    ) -> Result<Response<cw::FileSystemSnapshot>, Status> {
        Err(unimplemented("GetFileSystemSnapshot"))
    }

    async fn list_file_system_snapshots(
        &self,
        _req: Request<cw::ListFileSystemSnapshotsRequest>,
    ) -> Result<Response<cw::ListFileSystemSnapshotsResponse>, Status> {
        Err(unimplemented("ListFileSystemSnapshots"))
    }

    async fn delete_file_system_snapshot(
        &self,
        _req: Request<cw::DeleteFileSystemSnapshotRequest>,
    ) -> Result<Response<cw::FileSystemSnapshot>, Status> {
        Err(unimplemented("DeleteFileSystemSnapshot"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(container: cw::Container, tags: &[&str]) -> cw::CreateSandboxRequest {
        let spec = cw::SandboxSpec {
            containers: vec![container],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            max_lifetime_seconds: 600,
            ..Default::default()
        };
        cw::CreateSandboxRequest {
            sandbox: Some(cw::Sandbox { spec: Some(spec), ..Default::default() }),
            request_id: "req-1".into(),
        }
    }

    /// cwsandbox's `NetworkOptions`: grants become allow- and deny-lists, `deny_egress` loopback only.
    #[test]
    fn network_options_map_onto_policies() {
        use cw::egress_rule::Destination;
        let rule = |d| cw::EgressRule { destination: Some(d), ..Default::default() };
        let cidr = cw::CidrBlock { cidr: "10.8.0.0/16".into(), except: vec!["10.8.9.0/24".into()] };
        let grants = cw::NetworkOptions {
            egress: vec![rule(Destination::HttpsHostname("*.pypi.org".into())), rule(Destination::Cidr(cidr))],
            ..Default::default()
        };
        let want = hangar_types::NetworkPolicy::egress().allow("*.pypi.org").allow("10.8.0.0/16").deny("10.8.9.0/24");
        assert_eq!(network_of(grants).unwrap(), Some(want));
        let deny = cw::NetworkOptions { deny_egress: Some(true), ..Default::default() };
        assert_eq!(network_of(deny).unwrap().unwrap().mode, hangar_types::NetworkMode::None);
        assert_eq!(network_of(cw::NetworkOptions::default()).unwrap(), None, "no grant: the server's default");
        let any = cw::NetworkOptions { egress: vec![rule(Destination::Any(true))], ..Default::default() };
        assert_eq!(network_of(any).unwrap(), Some(hangar_types::NetworkPolicy::egress()));
        let tenant = cw::NetworkOptions { egress: vec![rule(Destination::Tenant(1))], ..Default::default() };
        assert_eq!(network_of(tenant).unwrap_err().code(), tonic::Code::Unimplemented);
    }

    /// The client's request, as cwsandbox 1.22.0 builds it, becomes the shared configuration: argv from the
    /// command string and args, quantities from the limits, tags as keys, and back again on the way out.
    #[test]
    fn a_cwsandbox_request_maps_onto_the_shared_config_and_back() {
        let limits = cw::Resources { cpu: "500m".into(), memory: "256Mi".into(), gpu: None };
        let c = cw::Container {
            image: "python:3.11".into(),
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "sleep infinity".into()],
            environment_variables: [("MODEL".to_string(), "tiny".to_string())].into(),
            resource_requirements: Some(cw::ResourceRequirements {
                requests: Some(limits.clone()),
                limits: Some(limits),
            }),
            working_dir: "/work".into(),
            ..Default::default()
        };
        let cfg = config_of(request(c, &["nightly"]), Tenant("alice".into())).unwrap();
        assert_eq!(cfg.command, ["/bin/sh", "-c", "sleep infinity"]);
        assert_eq!((cfg.cpus, cfg.memory_bytes), (Some(0.5), Some(256 << 20)));
        assert_eq!(cfg.env, [("MODEL".to_string(), "tiny".to_string())]);
        assert_eq!(cfg.tags.get("nightly").map(String::as_str), Some(""));
        assert_eq!((cfg.max_lifetime, cfg.request_id.as_deref()), (Duration::from_secs(600), Some("req-1")));
        assert_eq!(
            (cfg.tenant.as_str(), cfg.workdir.as_deref(), cfg.image.as_str()),
            ("alice", Some("/work"), "python:3.11")
        );

        let info = SandboxInfo {
            id: "sb-1".into(),
            state: SandboxState::Failed,
            image: cfg.image.clone(),
            command: cfg.command.clone(),
            tags: [("nightly".to_string(), String::new()), ("team".to_string(), "ml".to_string())].into(),
            cpus: cfg.cpus,
            memory_bytes: cfg.memory_bytes,
            pids: None,
            max_lifetime_ms: 600_000,
            created_at_ms: 1,
            ended_at_ms: Some(2),
            exit_code: Some(3),
            exit_signal: None,
            end_reason: Some("exited".into()),
            error: None,
            tenant: "alice".into(),
            progress: None,
            network: Default::default(),
        };
        let sb = sandbox_of(info);
        let spec = sb.spec.unwrap();
        assert_eq!(spec.tags, ["nightly", "team=ml"]);
        assert_eq!((spec.containers[0].command.as_str(), spec.containers[0].args.len()), ("/bin/sh", 2));
        let status = sb.status.unwrap();
        assert_eq!((status.state, status.exit_code), (cw::State::Failed as i32, Some(3)));
        assert_eq!(status.state_reason, "the main command exited with code 3");
    }

    #[test]
    fn what_hangar_cannot_do_is_refused_by_name() {
        let gpu = cw::Resources { gpu: Some(cw::Gpu { count: 1, selector: None }), ..Default::default() };
        let c = cw::Container {
            resource_requirements: Some(cw::ResourceRequirements { limits: Some(gpu), requests: None }),
            ..Default::default()
        };
        let e = config_of(request(c, &[]), Tenant("a".into())).unwrap_err();
        assert!(e.message().contains("resources.gpu"), "{e:?}");
        let c = cw::Container { args: vec!["x".into()], ..Default::default() };
        let e = config_of(request(c, &[]), Tenant("a".into())).unwrap_err();
        assert!(e.message().contains("args"), "{e:?}");
        let bad = cw::Resources { memory: "lots".into(), ..Default::default() };
        let c = cw::Container { resources: Some(bad), ..Default::default() };
        let e = config_of(request(c, &[]), Tenant("a".into())).unwrap_err();
        assert!(e.message().contains("lots"), "{e:?}");
    }
}
