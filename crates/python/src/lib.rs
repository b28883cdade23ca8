//! `hangar_sandbox._native`: the Rust SDK (crate `hangar`) as a CPython extension module. Every operation is
//! the SDK's own; this file only translates: Python arguments into SDK calls, SDK futures into asyncio
//! awaitables ([`bridge`]: a cancelled awaitable drops its Rust future), and SDK values and errors into the
//! Python classes of `hangar_sandbox._types` and `hangar_sandbox.errors`, built on the loop's thread.
//! The Python API itself (`Sandbox`, `exec` with callbacks, the sync facade) is in `python/hangar_sandbox`.

use hangar::{Client, Ending, Error, ExecEvent, ExecInfo, ExecResult, OutputStream, SandboxInfo, Usage};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

mod bridge;
use bridge::{Convert, spawn};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

/// Events a run's pump may read ahead of Python: the backpressure window (a slow callback slows the
/// command once this many chunks wait, instead of memory growing).
const READ_AHEAD: usize = 64;

// ---- values: SDK types into the Python classes of `hangar_sandbox._types` ----

fn class<'py>(py: Python<'py>, module: &str, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import(module)?.getattr(name)
}

fn new_obj<'py>(py: Python<'py>, name: &str, kw: Bound<'py, PyDict>) -> PyResult<Py<PyAny>> {
    Ok(class(py, "hangar_sandbox._types", name)?.call((), Some(&kw))?.unbind())
}

fn stream_name(s: OutputStream) -> &'static str {
    match s {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

/// How an exec ended, as one word, and the signal or start failure that goes with it.
fn ending_kw(kw: &Bound<'_, PyDict>, ending: &Ending) -> PyResult<()> {
    let (kind, detail) = match ending {
        Ending::Exited { .. } => ("exited", None),
        Ending::Signaled { .. } => ("signaled", None),
        Ending::TimedOut => ("timed_out", None),
        Ending::Cancelled => ("cancelled", None),
        Ending::OomKilled => ("oom_killed", None),
        Ending::FailedToStart(f) => ("failed_to_start", Some(f.message.clone())),
        Ending::SandboxGone => ("sandbox_gone", None),
    };
    kw.set_item("ending", kind)?;
    kw.set_item("ending_detail", detail)
}

fn usage_obj(py: Python<'_>, u: &Usage) -> PyResult<Py<PyAny>> {
    let kw = PyDict::new(py);
    kw.set_item("wall_ms", u.wall_ms)?;
    kw.set_item("cpu_user_us", u.cpu_user_us)?;
    kw.set_item("cpu_sys_us", u.cpu_sys_us)?;
    kw.set_item("peak_memory_bytes", u.peak_memory_bytes)?;
    new_obj(py, "Usage", kw)
}

fn result_obj(py: Python<'_>, r: &ExecResult, command: &[String]) -> PyResult<Py<PyAny>> {
    let kw = PyDict::new(py);
    kw.set_item("returncode", r.returncode)?;
    kw.set_item("stdout_bytes", PyBytes::new(py, &r.stdout))?;
    kw.set_item("stderr_bytes", PyBytes::new(py, &r.stderr))?;
    kw.set_item("command", command.to_vec())?;
    kw.set_item("exec_id", &r.exec_id)?;
    ending_kw(&kw, &r.ending)?;
    kw.set_item("usage", usage_obj(py, &r.usage)?)?;
    new_obj(py, "ExecResult", kw)
}

fn event_obj(py: Python<'_>, ev: ExecEvent) -> PyResult<Py<PyAny>> {
    let kw = PyDict::new(py);
    let name = match ev {
        ExecEvent::Output { stream, offset, data } => {
            kw.set_item("stream", stream_name(stream))?;
            kw.set_item("offset", offset)?;
            kw.set_item("data", PyBytes::new(py, &data))?;
            "Output"
        }
        ExecEvent::Gap { stream, from, to } => {
            kw.set_item("stream", stream_name(stream))?;
            kw.set_item("start", from)?;
            kw.set_item("end", to)?;
            "Gap"
        }
        ExecEvent::Exit(end) => {
            ending_kw(&kw, &end.ending)?;
            kw.set_item("returncode", end.returncode())?;
            kw.set_item("stdout_total", end.bytes[0])?;
            kw.set_item("stderr_total", end.bytes[1])?;
            kw.set_item("usage", usage_obj(py, &end.usage)?)?;
            "Exit"
        }
    };
    new_obj(py, name, kw)
}

fn info_obj(py: Python<'_>, i: &SandboxInfo) -> PyResult<Py<PyAny>> {
    let kw = PyDict::new(py);
    kw.set_item("id", &i.id)?;
    kw.set_item("status", class(py, "hangar_sandbox._types", "SandboxStatus")?.call1((i.state.as_str(),))?)?;
    kw.set_item("image", &i.image)?;
    kw.set_item("command", i.command.clone())?;
    kw.set_item("tags", i.tags.clone())?;
    kw.set_item("cpus", i.cpus)?;
    kw.set_item("memory_bytes", i.memory_bytes)?;
    kw.set_item("pids", i.pids)?;
    kw.set_item("max_lifetime_seconds", i.max_lifetime_ms as f64 / 1000.0)?;
    kw.set_item("created_at_ms", i.created_at_ms)?;
    kw.set_item("ended_at_ms", i.ended_at_ms)?;
    kw.set_item("exit_code", i.exit_code)?;
    kw.set_item("exit_signal", i.exit_signal)?;
    kw.set_item("end_reason", i.end_reason.clone())?;
    kw.set_item("error", i.error.clone())?;
    kw.set_item("progress", i.progress.clone())?;
    kw.set_item("network", network_obj(py, &i.network)?)?;
    new_obj(py, "SandboxInfo", kw)
}

fn exec_info_obj(py: Python<'_>, i: &ExecInfo) -> PyResult<Py<PyAny>> {
    let kw = PyDict::new(py);
    kw.set_item("id", &i.id)?;
    kw.set_item("command", i.argv.clone())?;
    kw.set_item("pid", i.pid)?;
    kw.set_item("started_at_ms", i.started_at_ms)?;
    kw.set_item("tty", i.tty)?;
    kw.set_item("stdin_open", i.stdin_open)?;
    kw.set_item("stdout_written", i.written[0])?;
    kw.set_item("stderr_written", i.written[1])?;
    kw.set_item("attached", i.attached)?;
    kw.set_item("running", i.end.is_none())?;
    kw.set_item("returncode", i.end.as_ref().map(|e| e.returncode()))?;
    kw.set_item("expired", i.expired)?;
    new_obj(py, "ExecInfo", kw)
}

fn list_obj<T>(py: Python<'_>, items: &[T], f: fn(Python<'_>, &T) -> PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    let list = PyList::empty(py);
    for i in items {
        list.append(f(py, i)?)?;
    }
    Ok(list.into_any().unbind())
}

// ---- errors: each SDK error into its class of `hangar_sandbox.errors`, with the thing that failed ----

fn py_err(e: Error, command: &[String]) -> PyErr {
    Python::attach(|py| match build_err(py, &e, command) {
        Ok(err) => err,
        Err(conversion) => conversion,
    })
}

fn build_err(py: Python<'_>, e: &Error, command: &[String]) -> PyResult<PyErr> {
    let kw = PyDict::new(py);
    let with_result = |kw: &Bound<'_, PyDict>, cmd: &[String], r: &ExecResult| -> PyResult<()> {
        kw.set_item("command", cmd.to_vec())?;
        kw.set_item("exec_result", result_obj(py, r, cmd)?)
    };
    let name = match e {
        Error::NotFound { id } => {
            kw.set_item("sandbox_id", id)?;
            "SandboxNotFoundError"
        }
        Error::NotRunning { id, state } => {
            kw.set_item("sandbox_id", id)?;
            kw.set_item("status", state.as_str())?;
            "SandboxNotRunningError"
        }
        Error::Timeout { command, timeout, result } => {
            with_result(&kw, command, result)?;
            kw.set_item("timeout_seconds", timeout.as_secs_f64())?;
            "SandboxTimeoutError"
        }
        Error::ExecutionFailed { command, result } => {
            with_result(&kw, command, result)?;
            "SandboxExecutionError"
        }
        Error::IncompleteOutput { command, result, detail } => {
            with_result(&kw, command, result)?;
            kw.set_item("detail", detail)?;
            "IncompleteOutputError"
        }
        Error::CommandNotFound { .. } => {
            kw.set_item("command", command.to_vec())?;
            "CommandNotFoundError"
        }
        Error::StartFailed { .. } => {
            kw.set_item("command", command.to_vec())?;
            "SandboxResourceExhaustedError"
        }
        Error::File { path, kind, .. } => {
            kw.set_item("filepath", path)?;
            kw.set_item("reason", hangar_types::Reason::File(*kind).as_str())?;
            "SandboxFileError"
        }
        Error::SandboxFailed { .. } => "SandboxFailedError",
        Error::SandboxTerminated { id, .. } => {
            kw.set_item("sandbox_id", id)?;
            "SandboxTerminatedError"
        }
        Error::ExecNotFound { .. } => "ExecNotFoundError",
        Error::ExecExpired { .. } => "ExecExpiredError",
        Error::InvalidArgument(_) => "SandboxValidationError",
        Error::Unauthenticated(_) => "SandboxAuthenticationError",
        Error::Connection(_) => "SandboxConnectionError",
        Error::LocalIo(_) => "LocalIOError",
        _ => "SandboxInternalError",
    };
    let value = class(py, "hangar_sandbox.errors", name)?.call((e.to_string(),), Some(&kw))?;
    Ok(PyErr::from_value(value))
}

/// The conversion a finished call leaves for the loop's thread: `f` builds the value, or the error becomes
/// its class of `hangar_sandbox.errors` (naming `command` where it is about one).
fn reply<T: Send + 'static>(
    r: hangar::Result<T>,
    command: Vec<String>,
    f: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
) -> Convert {
    Box::new(move |py| match r {
        Ok(v) => f(py, v),
        Err(e) => Err(build_err(py, &e, &command).unwrap_or_else(|conversion| conversion)),
    })
}

fn none(py: Python<'_>, (): ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

fn invalid(message: String) -> PyErr {
    py_err(Error::InvalidArgument(message), &[])
}

/// A policy from Python's (mode, allow, deny).
fn network_policy((mode, allow, deny): (String, Vec<String>, Vec<String>)) -> PyResult<hangar::NetworkPolicy> {
    let mode = hangar::NetworkMode::parse(&mode)
        .ok_or_else(|| invalid(format!("network: mode {mode:?} is not \"none\" or \"egress\"")))?;
    let targets = |l: Vec<String>| -> PyResult<Vec<hangar::NetTarget>> {
        l.iter().map(|t| hangar::NetTarget::parse(t).map_err(|e| invalid(e.to_string()))).collect()
    };
    Ok(hangar::NetworkPolicy { mode, allow: targets(allow)?, deny: targets(deny)? })
}

fn network_obj(py: Python<'_>, p: &hangar::NetworkPolicy) -> PyResult<Py<PyAny>> {
    let kw = PyDict::new(py);
    let strings = |l: &[hangar::NetTarget]| PyTuple::new(py, l.iter().map(|t| t.to_string()));
    kw.set_item("mode", p.mode.as_str())?;
    kw.set_item("allow", strings(&p.allow)?)?;
    kw.set_item("deny", strings(&p.deny)?)?;
    new_obj(py, "NetworkPolicy", kw)
}

fn secs(field: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|v| Duration::try_from_secs_f64(v).map_err(|_| invalid(format!("{field}: {v} is not a number of seconds"))))
        .transpose()
}

// ---- the client ----

/// A connection to Hangar: the embedded engine on this machine, or a server.
#[pyclass(module = "hangar_sandbox._native", frozen)]
struct NativeClient(Client);

fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    let _guard = bridge::runtime().enter();
    f()
}

#[pymethods]
impl NativeClient {
    /// `HANGAR_URL` (and `HANGAR_TOKEN`) when set, else the embedded engine (`HANGAR_STATE_DIR`).
    #[staticmethod]
    fn from_env() -> PyResult<Self> {
        in_runtime(Client::from_env).map(Self).map_err(|e| py_err(e, &[]))
    }

    /// A server at `url`, authenticating with `token`.
    #[staticmethod]
    #[pyo3(signature = (url, token=None))]
    fn connect(url: &str, token: Option<&str>) -> PyResult<Self> {
        in_runtime(|| Client::connect(url, token)).map(Self).map_err(|e| py_err(e, &[]))
    }

    /// An embedded engine keeping its state in `state_dir`.
    #[staticmethod]
    fn embedded(state_dir: String) -> PyResult<Self> {
        #[cfg(feature = "embedded")]
        return in_runtime(|| Client::embedded(state_dir)).map(Self).map_err(|e| py_err(e, &[]));
        #[cfg(not(feature = "embedded"))]
        Err(invalid(format!("this build of hangar_sandbox has no embedded engine (for {state_dir}); set HANGAR_URL")))
    }

    #[pyo3(signature = (*, image=None, command=None, args=vec![], env=vec![], tags=vec![], workdir=None,
        cpus=None, memory_bytes=None, disk_bytes=None, pids=None, max_lifetime_seconds=None, request_id=None,
        image_command=false, network=None))]
    #[allow(clippy::too_many_arguments)]
    fn create<'py>(
        &self,
        py: Python<'py>,
        image: Option<String>,
        command: Option<String>,
        args: Vec<String>,
        env: Vec<(String, String)>,
        tags: Vec<(String, String)>,
        workdir: Option<String>,
        cpus: Option<f64>,
        memory_bytes: Option<u64>,
        disk_bytes: Option<u64>,
        pids: Option<u64>,
        max_lifetime_seconds: Option<f64>,
        request_id: Option<String>,
        image_command: bool,
        network: Option<(String, Vec<String>, Vec<String>)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut b = hangar::Sandbox::builder().client(&self.0).args(args);
        if image_command {
            b = b.image_command();
        }
        b = match image {
            Some(i) => b.image(i),
            None => b,
        };
        if let Some(c) = command {
            b = b.command(c);
        }
        for (k, v) in env {
            b = b.env(k, v);
        }
        for (k, v) in tags {
            b = b.tag(k, v);
        }
        if let Some(w) = workdir {
            b = b.workdir(w);
        }
        if let Some(c) = cpus {
            b = b.cpu(c);
        }
        if let Some(m) = memory_bytes {
            b = b.memory_bytes(m);
        }
        if let Some(d) = disk_bytes {
            b = b.disk_bytes(d);
        }
        if let Some(p) = pids {
            b = b.pids_limit(p);
        }
        if let Some(l) = secs("max_lifetime_seconds", max_lifetime_seconds)? {
            b = b.max_lifetime(l);
        }
        if let Some(r) = request_id {
            b = b.request_id(r);
        }
        if let Some(n) = network {
            b = b.network(network_policy(n)?);
        }
        spawn(
            py,
            async move { reply(b.create().await, vec![], |py, sb| Ok(Py::new(py, NativeSandbox(sb))?.into_any())) },
        )
    }

    /// The sandbox with this id (any state).
    fn get<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        let client = self.0.clone();
        spawn(py, async move {
            let sb = hangar::Sandbox::from_id_with(&client, &id).await;
            reply(sb, vec![], |py, sb| Ok(Py::new(py, NativeSandbox(sb))?.into_any()))
        })
    }

    /// Every sandbox this client sees, oldest first, as `(NativeSandbox, SandboxInfo)` pairs.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.0.clone();
        spawn(py, async move {
            let all = client.list().await;
            reply(all, vec![], move |py, all| {
                let list = PyList::empty(py);
                for info in &all {
                    let handle = Py::new(py, NativeSandbox(hangar::Sandbox::from_info(&client, info)))?;
                    list.append((handle, info_obj(py, info)?))?;
                }
                Ok(list.into_any().unbind())
            })
        })
    }
}

// ---- a sandbox ----

/// One sandbox (running or ended).
#[pyclass(module = "hangar_sandbox._native", frozen)]
struct NativeSandbox(hangar::Sandbox);

#[pymethods]
impl NativeSandbox {
    #[getter]
    fn id(&self) -> &str {
        self.0.id()
    }

    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move { reply(sb.info().await, vec![], |py, info| info_obj(py, &info)) })
    }

    fn publish_port<'py>(&self, py: Python<'py>, port: u16) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move {
            reply(sb.publish_port(port).await, vec![], |py, at| {
                Ok(at.to_string().into_pyobject(py)?.into_any().unbind())
            })
        })
    }

    fn set_network<'py>(
        &self,
        py: Python<'py>,
        mode: String,
        allow: Vec<String>,
        deny: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (sb, policy) = (self.0.clone(), network_policy((mode, allow, deny))?);
        spawn(py, async move { reply(sb.set_network(policy).await, vec![], |py, info| info_obj(py, &info)) })
    }

    /// Runs `argv`: with `events=False` the awaitable gives its `ExecResult` (or raises its typed error), and
    /// cancelling it kills the exec; with `events=True` it gives a `NativeRun` to read the output from.
    #[pyo3(signature = (argv, *, events=false, env=vec![], cwd=None, timeout_seconds=None, stdin=None,
        open_stdin=false, id=None, tty=None, merged=false, check=false, capture=true, kill_on_disconnect_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        argv: Vec<String>,
        events: bool,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        timeout_seconds: Option<f64>,
        stdin: Option<Vec<u8>>,
        open_stdin: bool,
        id: Option<String>,
        tty: Option<(u16, u16)>,
        merged: bool,
        check: bool,
        capture: bool,
        kill_on_disconnect_ms: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = secs("timeout_seconds", timeout_seconds)?;
        let sb = self.0.clone();
        spawn(py, async move {
            // The start runs in a task of its own, which kills what it started when nobody waits for it any
            // more: an exec whose start is cancelled (the task, Ctrl-C) never runs on unseen.
            let (started_tx, started) = oneshot::channel();
            let command = argv.clone();
            tokio::spawn(async move {
                let mut x = sb.exec(command).check(check).capture(capture).merged(merged);
                for (k, v) in env {
                    x = x.env(k, v);
                }
                if let Some(d) = cwd {
                    x = x.cwd(d);
                }
                if let Some(t) = timeout {
                    x = x.timeout(t);
                }
                if let Some(data) = stdin {
                    x = x.stdin(data);
                } else if open_stdin {
                    x = x.open_stdin();
                }
                if let Some(i) = id {
                    x = x.id(i);
                }
                if let Some((rows, cols)) = tty {
                    x = x.tty(rows, cols);
                }
                if let Some(grace_ms) = kill_on_disconnect_ms {
                    x = x.on_disconnect(hangar::OnDisconnect::Kill { grace_ms });
                }
                if let Err(Ok(run)) = started_tx.send(x.events().await) {
                    run.handle().input().signal(9).await.ok();
                }
            });
            let run = match started.await {
                Ok(Ok(run)) => run,
                Ok(Err(e)) => return reply(Err::<(), _>(e), argv, none),
                Err(_) => return reply(Err::<(), _>(Error::Internal("the exec's start task died".into())), argv, none),
            };
            if events {
                let run = NativeRun::pump(run, argv.clone(), true);
                return reply(Ok(run), argv, |py, run| Ok(Py::new(py, run)?.into_any()));
            }
            // Awaited to its end here: cancelling the awaitable now kills the exec's tree too.
            let mut kill = KillOnDrop(Some(run.handle().input()));
            let r = run.finish().await;
            kill.0 = None;
            reply(r, argv.clone(), move |py, r| result_obj(py, &r, &argv))
        })
    }

    /// Follows exec `exec_id` from these offsets, as a `NativeRun`.
    #[pyo3(signature = (exec_id, stdout_offset=0, stderr_offset=0, capture=true))]
    fn attach<'py>(
        &self,
        py: Python<'py>,
        exec_id: String,
        stdout_offset: u64,
        stderr_offset: u64,
        capture: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move {
            let x = sb.attach(exec_id).from_offsets(stdout_offset, stderr_offset).capture(capture);
            let run = x.events().await.map(|run| {
                let command = run.handle().command().to_vec();
                NativeRun::pump(run, command, false)
            });
            reply(run, vec![], |py, run| Ok(Py::new(py, run)?.into_any()))
        })
    }

    /// The sandbox's log from `from_offset` (or its last `tail_lines` lines), as a `NativeLog`.
    #[pyo3(signature = (*, follow=false, from_offset=0, tail_lines=None, since_seconds=None))]
    fn logs<'py>(
        &self,
        py: Python<'py>,
        follow: bool,
        from_offset: u64,
        tail_lines: Option<u64>,
        since_seconds: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let since = since_seconds
            .map(|s| Duration::try_from_secs_f64(s).map_err(|_| invalid(format!("since: {s} is not a Unix time"))))
            .transpose()?;
        let sb = self.0.clone();
        spawn(py, async move {
            let mut logs = sb.logs().follow(follow).from_offset(from_offset);
            if let Some(n) = tail_lines {
                logs = logs.tail_lines(n);
            }
            if let Some(t) = since {
                logs = logs.since(std::time::UNIX_EPOCH + t);
            }
            let log = logs.start().await.map(NativeLog::pump);
            reply(log, vec![], |py, log| Ok(Py::new(py, log)?.into_any()))
        })
    }

    fn execs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move { reply(sb.execs().await, vec![], |py, all| list_obj(py, &all, exec_info_obj)) })
    }

    fn read_file<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move {
            reply(sb.read_file(&path).await, vec![], |py, data| Ok(PyBytes::new(py, &data).into_any().unbind()))
        })
    }

    fn write_file<'py>(&self, py: Python<'py>, path: String, data: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move { reply(sb.write_file(&path, data).await, vec![], none) })
    }

    #[pyo3(signature = (grace_seconds=None))]
    fn stop<'py>(&self, py: Python<'py>, grace_seconds: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let grace = secs("grace_seconds", grace_seconds)?;
        let sb = self.0.clone();
        spawn(py, async move {
            let info = match grace {
                Some(g) => sb.stop_with_grace(g).await,
                None => sb.stop().await,
            };
            reply(info, vec![], |py, info| info_obj(py, &info))
        })
    }

    fn delete<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.0.clone();
        spawn(py, async move { reply(sb.delete().await, vec![], none) })
    }
}

// ---- a running exec ----

/// Kills an exec's tree when dropped while armed (the future awaiting it was cancelled).
struct KillOnDrop(Option<hangar::ExecInput>);

impl KillOnDrop {
    fn disarm(kill: &std::sync::Mutex<KillOnDrop>) {
        kill.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(input) = self.0.take() {
            bridge::runtime().spawn(async move { input.signal(9).await });
        }
    }
}

/// An exec being followed: a pump task reads its events (at most [`READ_AHEAD`] ahead of Python) and
/// then its result; the input side (stdin, resize, signals) works meanwhile. Dropping it detaches.
#[pyclass(module = "hangar_sandbox._native", frozen)]
struct NativeRun {
    #[pyo3(get)]
    id: String,
    #[pyo3(get)]
    sandbox_id: String,
    #[pyo3(get)]
    command: Vec<String>,
    input: hangar::ExecInput,
    events: Arc<Mutex<mpsc::Receiver<ExecEvent>>>,
    result: Arc<Mutex<Option<oneshot::Receiver<hangar::Result<ExecResult>>>>>,
    /// Armed for a run that nobody else can find yet (a start: its caller may never see it): dropping it
    /// then kills the exec, until `keep` or the exec's end disarms it.
    kill: Arc<std::sync::Mutex<KillOnDrop>>,
    _pump: AbortOnDropHandle<()>,
}

impl NativeRun {
    /// Follows `run` in a task; its events go to `next_batch`. With `kill_on_drop`, dropping it before the
    /// exec ended (or before `keep`) kills the exec.
    fn pump(mut run: hangar::ExecRun, command: Vec<String>, kill_on_drop: bool) -> Self {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (done_tx, done_rx) = oneshot::channel();
        let h = run.handle();
        let (id, sandbox_id, input) = (h.id().to_string(), h.sandbox_id().to_string(), h.input());
        let kill = Arc::new(std::sync::Mutex::new(KillOnDrop(kill_on_drop.then(|| input.clone()))));
        let ended = kill.clone();
        let task = tokio::spawn(async move {
            let outcome = loop {
                match run.next_event().await {
                    // A send fails once nobody reads the events any more; the result still needs the rest.
                    Ok(Some(ev)) => _ = tx.send(ev).await,
                    Ok(None) => {
                        KillOnDrop::disarm(&ended);
                        break run.finish().await;
                    }
                    Err(e) => break Err(e),
                }
            };
            drop(tx);
            let _ = done_tx.send(outcome);
        });
        NativeRun {
            id,
            sandbox_id,
            command,
            input,
            events: Arc::new(Mutex::new(rx)),
            result: Arc::new(Mutex::new(Some(done_rx))),
            kill,
            _pump: AbortOnDropHandle::new(task),
        }
    }
}

#[pymethods]
impl NativeRun {
    /// The next events (`Output`, `Gap`, `Exit`): waits for one, then takes whatever else is already
    /// there, up to about `max_bytes` of output. `None` once the events ended.
    #[pyo3(signature = (max_bytes=4 << 20))]
    fn next_batch<'py>(&self, py: Python<'py>, max_bytes: usize) -> PyResult<Bound<'py, PyAny>> {
        next_batch(py, self.events.clone(), max_bytes)
    }

    /// The exec's `ExecResult`, or its typed error, once it ended (available once).
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (slot, command) = (self.result.clone(), self.command.clone());
        spawn(py, async move {
            let rx = slot.lock().await.take();
            let outcome = match rx {
                Some(rx) => rx.await.unwrap_or_else(|_| Err(Error::Internal("the exec's reader stopped".into()))),
                None => Err(Error::InvalidArgument("the result of this exec was already taken".into())),
            };
            reply(outcome, command.clone(), move |py, r| result_obj(py, &r, &command))
        })
    }

    /// From now on, dropping this run leaves the exec running (a handle that its caller received).
    fn keep(&self) {
        KillOnDrop::disarm(&self.kill);
    }

    /// Sends `signal` to the exec's whole process tree (9, SIGKILL, cancels it).
    fn signal<'py>(&self, py: Python<'py>, signal: i32) -> PyResult<Bound<'py, PyAny>> {
        let input = self.input.clone();
        spawn(py, async move { reply(input.signal(signal).await, vec![], none) })
    }

    fn write_stdin<'py>(&self, py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        let input = self.input.clone();
        spawn(py, async move { reply(input.write(data).await, vec![], none) })
    }

    fn close_stdin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let input = self.input.clone();
        spawn(py, async move { reply(input.close().await, vec![], none) })
    }

    fn resize<'py>(&self, py: Python<'py>, rows: u16, cols: u16) -> PyResult<Bound<'py, PyAny>> {
        let input = self.input.clone();
        spawn(py, async move { reply(input.resize(rows, cols).await, vec![], none) })
    }
}

/// The next events of a pumped stream (see `NativeRun::next_batch`).
fn next_batch(
    py: Python<'_>,
    events: Arc<Mutex<mpsc::Receiver<ExecEvent>>>,
    max_bytes: usize,
) -> PyResult<Bound<'_, PyAny>> {
    spawn(py, async move {
        let mut rx = events.lock().await;
        let Some(first) = rx.recv().await else {
            return Box::new(|py: Python<'_>| Ok(py.None())) as Convert;
        };
        let size = |ev: &ExecEvent| match ev {
            ExecEvent::Output { data, .. } => data.len(),
            _ => 0,
        };
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while bytes < max_bytes {
            match rx.try_recv() {
                Ok(ev) => {
                    bytes += size(&ev);
                    batch.push(ev);
                }
                Err(_) => break,
            }
        }
        reply(Ok(batch), vec![], |py, batch| {
            let list = PyList::empty(py);
            for ev in batch {
                list.append(event_obj(py, ev)?)?;
            }
            Ok(list.into_any().unbind())
        })
    })
}

/// A sandbox's log being read (`Sandbox::logs`): its events, pumped like an exec's, then its end.
#[pyclass(module = "hangar_sandbox._native", frozen)]
struct NativeLog {
    /// Where the log's output starts (the offset asked for, or where the tail begins).
    #[pyo3(get)]
    start: u64,
    events: Arc<Mutex<mpsc::Receiver<ExecEvent>>>,
    outcome: Arc<Mutex<Option<oneshot::Receiver<hangar::Result<()>>>>>,
    _pump: AbortOnDropHandle<()>,
}

impl NativeLog {
    fn pump(mut log: hangar::LogStream) -> Self {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (done_tx, done_rx) = oneshot::channel();
        let start = log.position();
        let task = tokio::spawn(async move {
            let outcome = loop {
                match log.next_event().await {
                    Ok(Some(ev)) => {
                        if tx.send(ev).await.is_err() {
                            break Ok(());
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            drop(tx);
            let _ = done_tx.send(outcome);
        });
        NativeLog {
            start,
            events: Arc::new(Mutex::new(rx)),
            outcome: Arc::new(Mutex::new(Some(done_rx))),
            _pump: AbortOnDropHandle::new(task),
        }
    }
}

#[pymethods]
impl NativeLog {
    /// The next events, as `NativeRun::next_batch`; `None` once the log's read ended.
    #[pyo3(signature = (max_bytes=4 << 20))]
    fn next_batch<'py>(&self, py: Python<'py>, max_bytes: usize) -> PyResult<Bound<'py, PyAny>> {
        next_batch(py, self.events.clone(), max_bytes)
    }

    /// After the last batch: `None`, or the typed error the read ended with.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let slot = self.outcome.clone();
        spawn(py, async move {
            let rx = slot.lock().await.take();
            let outcome = match rx {
                Some(rx) => rx.await.unwrap_or(Ok(())),
                None => Ok(()),
            };
            reply(outcome, vec![], none)
        })
    }
}

// ---- small shared rules ----

/// Whole lines out of chunks (the Rust SDK's `LineBuffer`, for `on_stdout_line`).
#[pyclass(module = "hangar_sandbox._native")]
#[derive(Default)]
struct LineBuffer(hangar::LineBuffer);

#[pymethods]
impl LineBuffer {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// The lines this chunk completes.
    fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        self.0.push(data, |l| lines.push(l.to_string()));
        lines
    }

    /// A last line without a newline, if any.
    fn finish(&mut self) -> Option<String> {
        let mut last = None;
        self.0.finish(|l| last = Some(l.to_string()));
        last
    }
}

/// CPU cores from a Kubernetes quantity (`"500m"`, `"2"`).
#[pyfunction]
fn parse_cpus(field: &str, quantity: &str) -> PyResult<f64> {
    hangar::quantity::cpus("cpu", quantity).map_err(|e| invalid(format!("{field}: {}", e.message)))
}

/// Bytes from a Kubernetes quantity (`"256Mi"`, `"1G"`).
#[pyfunction]
fn parse_bytes(field: &str, quantity: &str) -> PyResult<u64> {
    hangar::quantity::bytes("memory", quantity).map_err(|e| invalid(format!("{field}: {}", e.message)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_class::<NativeSandbox>()?;
    m.add_class::<NativeRun>()?;
    m.add_class::<NativeLog>()?;
    m.add_class::<LineBuffer>()?;
    m.add_class::<bridge::LoopBridge>()?;
    m.add_function(wrap_pyfunction!(parse_cpus, m)?)?;
    m.add_function(wrap_pyfunction!(parse_bytes, m)?)?;
    Ok(())
}
