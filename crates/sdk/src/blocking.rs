//! The SDK without async: the same [`crate::Sandbox`], driven on a runtime the SDK owns, and stopped when
//! the handle is dropped (the scope guard that `with Sandbox(...)` is in Python).
//!
//! ```no_run
//! # fn demo() -> hangar::Result<()> {
//! use hangar::blocking::Sandbox;
//! let sb = Sandbox::create(hangar::Sandbox::builder().memory_mb(256))?;
//! sb.write_file("hello.py", "print('hello')")?;
//! let r = sb.exec(["python3", "hello.py"]).run_blocking()?;
//! assert_eq!(r.stdout_text(), "hello\n");
//! // dropped here: the sandbox is stopped
//! # Ok(()) }
//! ```

use crate::{Error, Result, SandboxBuilder, SandboxInfo};
use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::InvalidArgument(
            "the blocking facade cannot be used inside an async runtime; use hangar::Sandbox".into(),
        ));
    }
    shared_runtime()
}

/// The SDK's own runtime, alive for the whole process: the blocking facade runs on it, and server
/// connections live on it so a `Client` keeps working whichever runtime (or none) its caller uses.
pub(crate) fn shared_runtime() -> Result<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // One builder at a time: a runtime built by a thread that lost the race would be dropped, and dropping
    // a runtime inside another runtime (the caller's async code) panics.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hangar-sdk")
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the SDK's runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// A sandbox for synchronous code (dropped inside an async runtime it cannot block, so it is not stopped
/// there: use the async [`crate::Sandbox`] in async code). Derefs to [`crate::Sandbox`] for [`crate::Sandbox::exec`] (run it with
/// [`crate::Exec::run_blocking`]) and `id`; stopped on drop unless [`Sandbox::detach`]ed.
///
/// ```no_run
/// # fn demo() -> hangar::Result<()> {
/// let sb = hangar::blocking::Sandbox::create(hangar::Sandbox::builder())?;
/// let r = sb.exec(["uname", "-r"]).run_blocking()?;
/// println!("{} runs kernel {}", sb.id(), r.stdout_text().trim());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Sandbox {
    inner: Option<crate::Sandbox>,
}

impl Sandbox {
    /// Creates a sandbox from a builder and waits until it runs.
    ///
    /// ```no_run
    /// # fn demo() -> hangar::Result<()> {
    /// // Outside any async runtime only; inside one, use `hangar::Sandbox`.
    /// let sb = hangar::blocking::Sandbox::create(hangar::Sandbox::builder().memory_mb(512).tag("job", "ci"))?;
    /// # Ok(()) }
    /// ```
    pub fn create(builder: SandboxBuilder) -> Result<Self> {
        Ok(Self { inner: Some(runtime()?.block_on(builder.create())?) })
    }

    fn sb(&self) -> &crate::Sandbox {
        self.inner.as_ref().expect("present until drop or detach")
    }

    /// Reads a file from the sandbox.
    ///
    /// ```no_run
    /// # fn demo(sb: &hangar::blocking::Sandbox) -> hangar::Result<()> {
    /// sb.exec(["python3", "-c", "open('out.txt', 'w').write('done')"]).run_blocking()?;
    /// assert_eq!(sb.read_file("out.txt")?, b"done");
    /// # Ok(()) }
    /// ```
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        runtime()?.block_on(self.sb().read_file(path))
    }

    /// Writes a file into the sandbox.
    ///
    /// ```no_run
    /// # fn demo(sb: &hangar::blocking::Sandbox) -> hangar::Result<()> {
    /// sb.write_file("input.json", r#"{"epochs": 3}"#)?;
    /// sb.exec(["python3", "train.py", "input.json"]).check(true).run_blocking()?;
    /// # Ok(()) }
    /// ```
    pub fn write_file(&self, path: &str, data: impl AsRef<[u8]>) -> Result<()> {
        runtime()?.block_on(self.sb().write_file(path, data))
    }

    /// The sandbox's current record.
    ///
    /// ```no_run
    /// # fn demo(sb: &hangar::blocking::Sandbox) -> hangar::Result<()> {
    /// println!("{} is {}", sb.id(), sb.info()?.state);
    /// # Ok(()) }
    /// ```
    pub fn info(&self) -> Result<SandboxInfo> {
        runtime()?.block_on(self.sb().info())
    }

    /// Stops the sandbox now (default grace) and returns its final record.
    ///
    /// ```no_run
    /// # fn demo(sb: hangar::blocking::Sandbox) -> hangar::Result<()> {
    /// // Unlike dropping the handle, this reports a failed stop.
    /// assert!(sb.stop()?.state.is_final());
    /// # Ok(()) }
    /// ```
    pub fn stop(mut self) -> Result<SandboxInfo> {
        let sb = self.inner.take().expect("present until drop or detach");
        runtime()?.block_on(sb.stop())
    }

    /// Keeps the sandbox running after this handle is dropped; returns the async handle.
    ///
    /// ```no_run
    /// # fn demo() -> hangar::Result<()> {
    /// let server = hangar::Sandbox::builder().command("python3").args(["-m", "http.server"]);
    /// let sb = hangar::blocking::Sandbox::create(server)?;
    /// // The server must outlive this setup script; its id lets later runs reattach.
    /// println!("{}", sb.detach().id());
    /// # Ok(()) }
    /// ```
    pub fn detach(mut self) -> crate::Sandbox {
        self.inner.take().expect("present until drop or detach")
    }
}

impl std::ops::Deref for Sandbox {
    type Target = crate::Sandbox;
    fn deref(&self) -> &crate::Sandbox {
        self.sb()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let (Some(sb), Ok(rt)) = (self.inner.take(), runtime()) {
            let _ = rt.block_on(sb.stop());
        }
    }
}
