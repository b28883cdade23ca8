//! `hangar.v1` ⇄ the shared types, both directions, once: the server and the SDK both use these, so they
//! cannot disagree about what a field means. Conversions from the wire that can fail return
//! [`hangar_types::Invalid`], naming the field.

use crate::v1 as pb;
use hangar_types::{
    Ending, ExecEnd, ExecEvent, ExecInfo, ExecSpec, Invalid, NetTarget, NetworkMode, NetworkPolicy, OnDisconnect,
    Output, OutputStream, SandboxConfig, SandboxInfo, SandboxState, StartFailure, StartFailureKind, Usage,
};
use std::time::Duration;

/// Metadata key of the machine-readable reason ([`hangar_types::Reason`]) on every error status.
pub const REASON_KEY: &str = "hangar-reason";
/// Metadata key of the failing path on file errors.
pub const PATH_KEY: &str = "hangar-path";
/// Metadata key of the sandbox's state on `NOT_RUNNING` errors.
pub const STATE_KEY: &str = "hangar-state";

/// The `hangar.v1` name of a field that [`hangar_types`] validation names: the wire spells durations and
/// sizes with their unit.
///
/// ```
/// assert_eq!(hangar_proto::convert::wire_field("timeout"), "timeout_ms");
/// assert_eq!(hangar_proto::convert::wire_field("argv"), "argv");
/// ```
pub fn wire_field(field: &'static str) -> &'static str {
    match field {
        "timeout" => "timeout_ms",
        "max_lifetime" => "max_lifetime_ms",
        "retain" => "retain_ms",
        "journal_cap" => "journal_cap_bytes",
        "stop_grace" => "grace_ms",
        other => other,
    }
}

/// A terminal size when an init asks for a terminal without one.
const DEFAULT_TTY: (u16, u16) = (24, 80);

fn none_if_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn sorted(map: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort();
    v
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl From<SandboxInfo> for pb::Sandbox {
    fn from(i: SandboxInfo) -> Self {
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
            network: Some(i.network.into()),
        }
    }
}

impl From<NetworkPolicy> for pb::NetworkPolicy {
    fn from(p: NetworkPolicy) -> Self {
        let strings = |l: Vec<NetTarget>| l.into_iter().map(String::from).collect();
        pb::NetworkPolicy { mode: p.mode.as_str().into(), allow: strings(p.allow), deny: strings(p.deny) }
    }
}

/// A policy from the wire; `None` when its mode is empty (the server's default) and it has no lists.
///
/// ```
/// use hangar_proto::{convert::network_policy, v1};
/// let p = v1::NetworkPolicy { mode: "egress".into(), allow: vec!["10.0.0.0/8".into()], deny: vec![] };
/// assert_eq!(network_policy(p).unwrap().unwrap().allow[0].to_string(), "10.0.0.0/8");
/// let bad = v1::NetworkPolicy { mode: "bridge".into(), ..Default::default() };
/// assert_eq!(network_policy(bad).unwrap_err().to_string(), "network: mode \"bridge\" is not none or egress");
/// ```
pub fn network_policy(p: pb::NetworkPolicy) -> Result<Option<NetworkPolicy>, Invalid> {
    if p.mode.is_empty() && p.allow.is_empty() && p.deny.is_empty() {
        return Ok(None);
    }
    let mode = match p.mode.as_str() {
        "" => NetworkMode::Egress,
        m => {
            NetworkMode::parse(m).ok_or_else(|| Invalid::new("network", format!("mode {m:?} is not none or egress")))?
        }
    };
    let targets = |l: Vec<String>| l.iter().map(|t| NetTarget::parse(t)).collect::<Result<Vec<_>, _>>();
    Ok(Some(NetworkPolicy { mode, allow: targets(p.allow)?, deny: targets(p.deny)? }))
}

/// A sandbox record as a client sees it (the tenant stays on the server). A state this client does not know
/// (from a newer server) reads as `failed`.
impl From<pb::Sandbox> for SandboxInfo {
    fn from(s: pb::Sandbox) -> Self {
        SandboxInfo {
            id: s.id,
            state: SandboxState::parse(&s.state).unwrap_or(SandboxState::Failed),
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
            end_reason: none_if_empty(s.end_reason),
            error: none_if_empty(s.error),
            tenant: String::new(),
            progress: none_if_empty(s.progress),
            network: s.network.and_then(|n| network_policy(n).ok().flatten()).unwrap_or_default(),
        }
    }
}

/// A create request (the tenant and the stop grace are the server's to set).
impl From<SandboxConfig> for pb::CreateSandboxRequest {
    fn from(c: SandboxConfig) -> Self {
        pb::CreateSandboxRequest {
            request_id: c.request_id.unwrap_or_default(),
            image: c.image,
            command: c.command,
            image_command: c.image_command,
            env: c.env.into_iter().collect(),
            tags: c.tags.into_iter().collect(),
            workdir: c.workdir.unwrap_or_default(),
            cpus: c.cpus,
            memory_bytes: c.memory_bytes,
            pids: c.pids,
            max_lifetime_ms: Some(millis(c.max_lifetime)),
            disk_bytes: c.disk_bytes,
            network: c.network.map(Into::into),
        }
    }
}

/// What a create request asks for; unset fields keep their defaults. Rules are checked by
/// [`SandboxConfig::validate`], where the engine checks every request; only what cannot be represented (a
/// network entry that does not parse) fails here.
impl TryFrom<pb::CreateSandboxRequest> for SandboxConfig {
    type Error = Invalid;
    fn try_from(r: pb::CreateSandboxRequest) -> Result<Self, Invalid> {
        let d = SandboxConfig::default();
        Ok(SandboxConfig {
            network: r.network.map(network_policy).transpose()?.flatten(),
            image: none_if_empty(r.image).unwrap_or(d.image),
            command: r.command,
            image_command: r.image_command,
            env: sorted(r.env),
            tags: r.tags.into_iter().collect(),
            workdir: none_if_empty(r.workdir),
            cpus: r.cpus,
            memory_bytes: r.memory_bytes,
            pids: r.pids,
            disk_bytes: r.disk_bytes,
            max_lifetime: r.max_lifetime_ms.map(Duration::from_millis).unwrap_or(d.max_lifetime),
            request_id: none_if_empty(r.request_id),
            ..d
        })
    }
}

/// The init of a streamed exec of `spec` in sandbox `sandbox_id`, asking for a keepalive every
/// `keepalive_ms` (0: the server's default).
pub fn exec_init(sandbox_id: &str, spec: ExecSpec, keepalive_ms: u64) -> pb::ExecInit {
    let (on_disconnect, disconnect_grace_ms) = match spec.on_disconnect {
        OnDisconnect::Keep => (pb::OnDisconnect::Keep, 0),
        OnDisconnect::Kill { grace_ms } => (pb::OnDisconnect::Kill, grace_ms),
    };
    let tty_size = match spec.output {
        Output::Pty { rows, cols } => Some(pb::Resize { rows: rows.into(), cols: cols.into() }),
        _ => None,
    };
    pb::ExecInit {
        sandbox_id: sandbox_id.into(),
        argv: spec.argv,
        env: spec.env.into_iter().collect(),
        cwd: spec.cwd.unwrap_or_default(),
        // Sub-millisecond timeouts round up: a positive timeout never becomes "none".
        timeout_ms: spec.timeout.map(|t| millis(t).max(1)),
        tty: spec.output.is_pty(),
        stdin: spec.stdin,
        exec_id: spec.id.unwrap_or_default(),
        tty_size,
        merged: spec.output == Output::Merged,
        on_disconnect: on_disconnect as i32,
        disconnect_grace_ms,
        retain_ms: spec.retain.map(millis),
        journal_cap_bytes: spec.journal_cap,
        keepalive_ms,
    }
}

fn size_field(field: &'static str, v: u32) -> Result<u16, Invalid> {
    u16::try_from(v).ok().filter(|&n| n > 0).ok_or_else(|| Invalid::new(field, "must be between 1 and 65535"))
}

/// The exec an init asks for (sandbox id and keepalive are the transport's).
impl TryFrom<pb::ExecInit> for ExecSpec {
    type Error = Invalid;
    fn try_from(i: pb::ExecInit) -> Result<Self, Invalid> {
        let output = match (i.tty, i.merged) {
            (true, true) => return Err(Invalid::new("merged", "a terminal is one stream already; drop merged")),
            (true, false) => {
                let (rows, cols) = match i.tty_size {
                    Some(s) => (size_field("tty_size.rows", s.rows)?, size_field("tty_size.cols", s.cols)?),
                    None => DEFAULT_TTY,
                };
                Output::Pty { rows, cols }
            }
            (false, true) => Output::Merged,
            (false, false) => Output::Split,
        };
        let on_disconnect = match pb::OnDisconnect::try_from(i.on_disconnect) {
            Ok(pb::OnDisconnect::Keep) => OnDisconnect::Keep,
            Ok(pb::OnDisconnect::Kill) => OnDisconnect::Kill { grace_ms: i.disconnect_grace_ms },
            Err(_) => return Err(Invalid::new("on_disconnect", format!("{} is not a policy", i.on_disconnect))),
        };
        Ok(ExecSpec {
            id: none_if_empty(i.exec_id),
            argv: i.argv,
            env: sorted(i.env),
            cwd: none_if_empty(i.cwd),
            timeout: i.timeout_ms.map(Duration::from_millis),
            stdin: i.stdin,
            output,
            on_disconnect,
            retain: i.retain_ms.map(Duration::from_millis),
            journal_cap: i.journal_cap_bytes,
        })
    }
}

/// The exec a unary request asks for: its caller cannot re-attach, so when it goes away, so does its command.
/// The stdin bytes, when given, are the caller's to feed.
impl From<&pb::ExecRequest> for ExecSpec {
    fn from(r: &pb::ExecRequest) -> Self {
        ExecSpec {
            env: sorted(r.env.clone()),
            cwd: none_if_empty(r.cwd.clone()),
            timeout: r.timeout_ms.map(Duration::from_millis),
            stdin: r.stdin.is_some(),
            on_disconnect: OnDisconnect::Kill { grace_ms: 0 },
            ..ExecSpec::new(r.argv.clone())
        }
    }
}

impl From<OutputStream> for pb::OutputStream {
    fn from(s: OutputStream) -> Self {
        match s {
            OutputStream::Stdout => pb::OutputStream::Stdout,
            OutputStream::Stderr => pb::OutputStream::Stderr,
        }
    }
}

/// The stream a frame names; an unspecified stream is stdout (as older servers sent it).
pub fn output_stream(s: i32) -> OutputStream {
    if s == pb::OutputStream::Stderr as i32 {
        OutputStream::Stderr
    } else {
        OutputStream::Stdout
    }
}

impl From<&ExecEnd> for pb::Exit {
    fn from(x: &ExecEnd) -> Self {
        let (reason, failure) = match &x.ending {
            Ending::Exited { .. } => (pb::ExitReason::Exited, None),
            Ending::Signaled { .. } => (pb::ExitReason::Signaled, None),
            Ending::TimedOut => (pb::ExitReason::TimedOut, None),
            Ending::Cancelled => (pb::ExitReason::Cancelled, None),
            Ending::OomKilled => (pb::ExitReason::OomKilled, None),
            Ending::FailedToStart(f) => (pb::ExitReason::FailedToStart, Some(f)),
            Ending::SandboxGone => (pb::ExitReason::SandboxGone, None),
        };
        pb::Exit {
            reason: reason as i32,
            code: x.code,
            signal: x.signal,
            stdout_bytes: x.bytes[0],
            stderr_bytes: x.bytes[1],
            stdout_crc32: x.crc32[0],
            stderr_crc32: x.crc32[1],
            message: failure.map(|f| f.message.clone()).unwrap_or_default(),
            command_missing: failure.is_some_and(|f| f.kind.is_command_problem()),
            failure: failure.map(|f| f.kind.as_str().to_string()).unwrap_or_default(),
            usage: Some(pb::Usage {
                wall_ms: x.usage.wall_ms,
                cpu_user_us: x.usage.cpu_user_us,
                cpu_sys_us: x.usage.cpu_sys_us,
                peak_memory_bytes: x.usage.peak_memory_bytes,
            }),
        }
    }
}

impl From<&pb::Exit> for ExecEnd {
    fn from(x: &pb::Exit) -> Self {
        let ending = match pb::ExitReason::try_from(x.reason).unwrap_or(pb::ExitReason::Exited) {
            pb::ExitReason::TimedOut => Ending::TimedOut,
            pb::ExitReason::Cancelled => Ending::Cancelled,
            pb::ExitReason::OomKilled => Ending::OomKilled,
            pb::ExitReason::FailedToStart => {
                let kind = StartFailureKind::parse(&x.failure).unwrap_or(match x.command_missing {
                    true => StartFailureKind::NotFound,
                    false => StartFailureKind::Other,
                });
                Ending::FailedToStart(StartFailure::new(kind, x.message.clone()))
            }
            pb::ExitReason::SandboxGone => Ending::SandboxGone,
            pb::ExitReason::Signaled => Ending::Signaled { signal: x.signal.unwrap_or(0) },
            pb::ExitReason::Exited | pb::ExitReason::Unspecified => Ending::Exited { code: x.code.unwrap_or(0) },
        };
        let u = x.usage.unwrap_or_default();
        ExecEnd {
            ending,
            code: x.code,
            signal: x.signal,
            bytes: [x.stdout_bytes, x.stderr_bytes],
            crc32: [x.stdout_crc32, x.stderr_crc32],
            usage: Usage {
                wall_ms: u.wall_ms,
                cpu_user_us: u.cpu_user_us,
                cpu_sys_us: u.cpu_sys_us,
                peak_memory_bytes: u.peak_memory_bytes,
            },
        }
    }
}

impl From<ExecInfo> for pb::ExecStatus {
    fn from(e: ExecInfo) -> Self {
        pb::ExecStatus {
            exec_id: e.id,
            argv: e.argv,
            pid: e.pid,
            started_at_ms: e.started_at_ms,
            tty: e.tty,
            merged: e.merged,
            stdin_open: e.stdin_open,
            stdin_acked: e.stdin_acked,
            stdout_bytes: e.written[0],
            stderr_bytes: e.written[1],
            attached: e.attached,
            exit: e.end.as_ref().map(Into::into),
            expired: e.expired,
        }
    }
}

impl From<pb::ExecStatus> for ExecInfo {
    fn from(e: pb::ExecStatus) -> Self {
        ExecInfo {
            id: e.exec_id,
            argv: e.argv,
            pid: e.pid,
            started_at_ms: e.started_at_ms,
            tty: e.tty,
            merged: e.merged,
            stdin_open: e.stdin_open,
            stdin_acked: e.stdin_acked,
            written: [e.stdout_bytes, e.stderr_bytes],
            attached: e.attached,
            end: e.exit.as_ref().map(Into::into),
            expired: e.expired,
        }
    }
}

/// An exec event as its stream frame.
impl From<ExecEvent> for pb::stream_exec_response::Msg {
    fn from(ev: ExecEvent) -> Self {
        use pb::stream_exec_response::Msg;
        match ev {
            ExecEvent::Output { stream, offset, data } => {
                Msg::Output(pb::Output { stream: pb::OutputStream::from(stream) as i32, offset, data })
            }
            ExecEvent::Gap { stream, from, to } => {
                Msg::Gap(pb::Gap { stream: pb::OutputStream::from(stream) as i32, from, to })
            }
            ExecEvent::Exit(end) => Msg::Exit((&end).into()),
        }
    }
}

/// The exec event a stream frame carries, if it carries one (ready, acks, keepalives and errors do not).
pub fn exec_event(msg: &pb::stream_exec_response::Msg) -> Option<ExecEvent> {
    use pb::stream_exec_response::Msg;
    match msg {
        Msg::Output(o) => {
            Some(ExecEvent::Output { stream: output_stream(o.stream), offset: o.offset, data: o.data.clone() })
        }
        Msg::Gap(g) => Some(ExecEvent::Gap { stream: output_stream(g.stream), from: g.from, to: g.to }),
        Msg::Exit(x) => Some(ExecEvent::Exit(x.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ends() -> Vec<ExecEnd> {
        let usage = Usage { wall_ms: 1, cpu_user_us: 2, cpu_sys_us: 3, peak_memory_bytes: 4 };
        let mut v: Vec<ExecEnd> = [
            Ending::Exited { code: 3 },
            Ending::Signaled { signal: 15 },
            Ending::TimedOut,
            Ending::Cancelled,
            Ending::OomKilled,
            Ending::SandboxGone,
        ]
        .into_iter()
        .map(|ending| ExecEnd { ending, code: Some(3), signal: Some(15), bytes: [5, 6], crc32: [7, 8], usage })
        .collect();
        for kind in StartFailureKind::ALL {
            v.push(ExecEnd::failed_to_start(StartFailure::new(kind, format!("{kind:?}: x"))));
        }
        v
    }

    #[test]
    fn ends_round_trip() {
        for end in ends() {
            assert_eq!(ExecEnd::from(&pb::Exit::from(&end)), end);
        }
    }

    #[test]
    fn an_older_servers_start_failure_keeps_its_meaning() {
        let x = pb::Exit {
            reason: pb::ExitReason::FailedToStart as i32,
            message: "command not found: x".into(),
            command_missing: true,
            ..Default::default()
        };
        let Ending::FailedToStart(f) = ExecEnd::from(&x).ending else { panic!("not a start failure") };
        assert_eq!(f.kind, StartFailureKind::NotFound);
    }

    #[test]
    fn exec_specs_round_trip() {
        for output in [Output::Split, Output::Merged, Output::Pty { rows: 40, cols: 100 }] {
            let spec = ExecSpec {
                id: Some("ex-1".into()),
                env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                cwd: Some("/work".into()),
                timeout: Some(Duration::from_millis(1500)),
                stdin: true,
                output,
                on_disconnect: OnDisconnect::Kill { grace_ms: 5 },
                retain: Some(Duration::from_secs(60)),
                journal_cap: Some(1 << 20),
                ..ExecSpec::new(["python3", "-c", "print(1)"])
            };
            let init = exec_init("sb-1", spec.clone(), 7);
            assert_eq!((init.sandbox_id.as_str(), init.keepalive_ms), ("sb-1", 7));
            assert_eq!(ExecSpec::try_from(init).unwrap(), spec);
        }
        assert_eq!(ExecSpec::try_from(exec_init("sb", ExecSpec::new(["true"]), 0)).unwrap(), ExecSpec::new(["true"]));
    }

    #[test]
    fn bad_inits_name_their_field() {
        let base = || exec_init("sb", ExecSpec::new(["sh"]), 0);
        let cases = [
            (
                pb::ExecInit { tty: true, tty_size: Some(pb::Resize { rows: 70_000, cols: 80 }), ..base() },
                "tty_size.rows",
            ),
            (pb::ExecInit { tty: true, tty_size: Some(pb::Resize { rows: 24, cols: 0 }), ..base() }, "tty_size.cols"),
            (pb::ExecInit { tty: true, merged: true, ..base() }, "merged"),
            (pb::ExecInit { on_disconnect: 9, ..base() }, "on_disconnect"),
        ];
        for (init, field) in cases {
            assert_eq!(ExecSpec::try_from(init).unwrap_err().field, field);
        }
        let tty = ExecSpec::try_from(pb::ExecInit { tty: true, ..base() }).unwrap();
        assert_eq!(tty.output, Output::Pty { rows: 24, cols: 80 });
    }

    #[test]
    fn sandbox_records_and_configs_round_trip() {
        let info = SandboxInfo {
            id: "sb-1".into(),
            state: SandboxState::Terminated,
            image: "python:3.11".into(),
            command: vec!["sleep".into(), "infinity".into()],
            tags: BTreeMap::from([("team".into(), "ml".into())]),
            cpus: Some(1.5),
            memory_bytes: Some(1 << 30),
            pids: Some(100),
            max_lifetime_ms: 60_000,
            created_at_ms: 1,
            ended_at_ms: Some(2),
            exit_code: Some(0),
            exit_signal: None,
            end_reason: Some("stopped".into()),
            error: None,
            tenant: String::new(),
            progress: None,
            network: NetworkPolicy::egress().allow("pypi.org").deny("10.0.0.0/8"),
        };
        assert_eq!(SandboxInfo::from(pb::Sandbox::from(info.clone())), info);
        let cfg = SandboxConfig {
            image: "python:3.11".into(),
            command: vec!["python3".into()],
            image_command: true,
            env: vec![("A".into(), "1".into()), ("Z".into(), "2".into())],
            tags: BTreeMap::from([("k".into(), "v".into())]),
            workdir: Some("/work".into()),
            cpus: Some(2.0),
            memory_bytes: Some(512 << 20),
            pids: Some(64),
            disk_bytes: Some(1 << 30),
            max_lifetime: Duration::from_secs(90),
            request_id: Some("req-1".into()),
            network: Some(NetworkPolicy::egress().allow("*.example.com")),
            ..SandboxConfig::default()
        };
        assert_eq!(SandboxConfig::try_from(pb::CreateSandboxRequest::from(cfg.clone())).unwrap(), cfg);
        assert_eq!(SandboxConfig::try_from(pb::CreateSandboxRequest::default()).unwrap(), SandboxConfig::default());
        let bad = pb::NetworkPolicy { mode: "egress".into(), allow: vec!["a..b".into()], deny: vec![] };
        let err = SandboxConfig::try_from(pb::CreateSandboxRequest { network: Some(bad), ..Default::default() });
        assert_eq!(err.unwrap_err().field, "network");
    }

    #[test]
    fn exec_infos_and_events_round_trip() {
        let info = ExecInfo {
            id: "ex-1".into(),
            argv: vec!["sh".into()],
            pid: 5,
            started_at_ms: 6,
            tty: true,
            stdin_open: true,
            stdin_acked: 7,
            written: [8, 9],
            attached: 2,
            end: ends().pop(),
            ..ExecInfo::default()
        };
        assert_eq!(ExecInfo::from(pb::ExecStatus::from(info.clone())), info);
        let events = [
            ExecEvent::Output { stream: OutputStream::Stderr, offset: 3, data: bytes::Bytes::from_static(b"x") },
            ExecEvent::Gap { stream: OutputStream::Stdout, from: 1, to: 9 },
            ExecEvent::Exit(ends().remove(0)),
        ];
        for ev in events {
            let msg = pb::stream_exec_response::Msg::from(ev.clone());
            assert_eq!(exec_event(&msg), Some(ev));
        }
    }
}
