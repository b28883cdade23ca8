//! SDK futures as asyncio awaitables, without ever touching Python from the runtime's threads.
//!
//! A call spawns its future on the module's tokio runtime and hands back an `asyncio.Future` of the calling
//! loop. When the Rust future is done, its thread queues a *conversion* (a closure that builds the Python
//! value or exception) and writes one byte to a socket the loop watches (`add_reader`); the loop's thread
//! then runs the conversions with the GIL it already holds and resolves the futures. So:
//! - no runtime thread ever waits for the GIL (a busy Python program cannot stall streaming), and no
//!   runtime thread is inside Python when the interpreter shuts down (CPython before 3.14 kills such a
//!   thread with `pthread_exit`, which aborts a Rust thread);
//! - an asyncio future that is cancelled aborts its Rust future (dropping it: a running exec's guard
//!   kills the exec).
//!
//! Why not pyo3-async-runtimes: it completes futures from a runtime thread that calls
//! `loop.call_soon_threadsafe` holding the GIL, which both costs a blocking-pool hop per await (~160 µs per
//! round trip measured here, this path ~30 µs) and aborted test processes at exit (that thread lets go of the
//! GIL inside the self-pipe write and cannot take it back once the interpreter finalizes).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::task::AbortHandle;

/// What a finished future leaves for the loop's thread: builds its result (or raises) with the GIL.
pub type Convert = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// The module's runtime: every SDK call runs on it.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hangar-py")
            .enable_all()
            .build()
            .expect("the Python SDK's tokio runtime starts")
    })
}

/// One event loop's completions: queued by runtime threads, run by the loop's thread.
struct Completions {
    wake: UnixStream,
    done: Mutex<Vec<(Py<PyAny>, Convert)>>,
}

impl Completions {
    fn push(&self, future: Py<PyAny>, convert: Convert) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push((future, convert));
        // Non-blocking: a full socket already holds a wake-up the loop has not read yet.
        let _ = (&self.wake).write(&[1]);
    }
}

/// Registered with a loop (`add_reader`): drains the wake-ups and resolves the finished futures.
#[pyclass(module = "hangar_sandbox._native", frozen)]
pub struct LoopBridge {
    completions: Arc<Completions>,
    reader: UnixStream,
}

#[pymethods]
impl LoopBridge {
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 512];
        while matches!((&self.reader).read(&mut buf), Ok(n) if n == buf.len()) {}
        let done = std::mem::take(&mut *self.completions.done.lock().unwrap_or_else(|p| p.into_inner()));
        for (future, convert) in done {
            let future = future.bind(py);
            let outcome = convert(py);
            if future.call_method0("cancelled")?.is_truthy()? {
                continue;
            }
            match outcome {
                Ok(v) => future.call_method1("set_result", (v,))?,
                Err(e) => future.call_method1("set_exception", (e.into_value(py),))?,
            };
        }
        Ok(())
    }
}

/// `add_done_callback` of each future: a cancelled asyncio future aborts its Rust task.
#[pyclass(module = "hangar_sandbox._native", frozen)]
struct AbortOnCancel(AbortHandle);

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.0.abort();
        }
        Ok(())
    }
}

/// The running loop and its completions, registering them with the loop on first use.
fn running_loop(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Arc<Completions>)> {
    static REGISTRY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let registry = REGISTRY
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("weakref")?.call_method0("WeakKeyDictionary")?.unbind()))?
        .bind(py);
    if let Ok(b) = registry.call_method1("get", (&event_loop,))?.cast::<LoopBridge>() {
        return Ok((event_loop, b.get().completions.clone()));
    }
    let (reader, wake) = UnixStream::pair()?;
    reader.set_nonblocking(true)?;
    wake.set_nonblocking(true)?;
    let fd = reader.as_raw_fd();
    let completions = Arc::new(Completions { wake, done: Mutex::new(Vec::new()) });
    let bridge = Bound::new(py, LoopBridge { completions: completions.clone(), reader })?;
    event_loop.call_method1("add_reader", (fd, bridge.getattr("drain")?))?;
    registry.set_item(&event_loop, &bridge)?;
    Ok((event_loop, completions))
}

/// Runs `fut` on the runtime and returns an `asyncio.Future` of the running loop that resolves with what its
/// conversion builds. A panic in `fut` becomes a `RuntimeError` naming it, not a future that never ends.
pub fn spawn<'py, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Convert> + Send + 'static,
{
    let (event_loop, completions) = running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    let target = future.clone().unbind();
    let task = runtime().spawn(async move {
        // A task of its own so that a panic is caught; aborted with this one.
        let inner = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(fut));
        let convert = match inner.await {
            Ok(c) => c,
            Err(e) => {
                let message = format!("hangar_sandbox: the native call failed: {e}");
                Box::new(move |_py: Python<'_>| Err(pyo3::exceptions::PyRuntimeError::new_err(message))) as Convert
            }
        };
        completions.push(target, convert);
    });
    future.call_method1("add_done_callback", (AbortOnCancel(task.abort_handle()),))?;
    Ok(future)
}
