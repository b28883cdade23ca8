use crate::{Error, Result, Sandbox};
use hangar_engine::{ExecEvent, ExecSpec, OutputStream};
use std::borrow::Cow;
use std::future::{Future, IntoFuture};
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

/// The complete result of a command: exit code and every byte it wrote, per stream.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// let r = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"]).await?;
/// assert_eq!((r.returncode, r.stdout_text().as_ref(), r.stderr_text().as_ref()), (3, "out\n", "err\n"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecResult {
    /// Exit code; `-N` when the process was killed by signal N (as Python's `subprocess` reports it).
    pub returncode: i32,
    /// Every byte written to stdout, exactly.
    pub stdout: Vec<u8>,
    /// Every byte written to stderr, exactly.
    pub stderr: Vec<u8>,
}

impl ExecResult {
    /// stdout decoded as UTF-8, invalid sequences replaced with U+FFFD.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let r = sb.exec(["python3", "-c", "import sys; print(sys.version_info.major)"]).await?;
    /// assert_eq!(r.stdout_text().trim(), "3");
    /// # Ok(()) }
    /// ```
    pub fn stdout_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }
    /// stderr decoded as UTF-8, invalid sequences replaced with U+FFFD.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let r = sb.exec(["python3", "-c", "import missing_module"]).await?;
    /// assert!(r.stderr_text().contains("ModuleNotFoundError"));
    /// # Ok(()) }
    /// ```
    pub fn stderr_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
    /// Whether the command exited with code 0.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // `test` answers through its exit code alone.
    /// if !sb.exec(["test", "-f", "requirements.txt"]).await?.success() {
    ///     sb.write_file("requirements.txt", "").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn success(&self) -> bool {
        self.returncode == 0
    }
}

type ChunkFn<'a> = Box<dyn FnMut(&[u8]) + Send + 'a>;
type LineFn<'a> = Box<dyn FnMut(&str) + Send + 'a>;

/// Where one stream's output goes as it arrives.
#[derive(Default)]
struct Sinks<'a> {
    chunk: Option<ChunkFn<'a>>,
    line: Option<LineFn<'a>>,
    pending: Vec<u8>,
    print: bool,
}

impl Sinks<'_> {
    fn deliver(&mut self, stream: OutputStream, data: &[u8]) {
        if self.print {
            let _ = match stream {
                OutputStream::Stdout => {
                    std::io::stdout().lock().write_all(data).and_then(|()| std::io::stdout().flush())
                }
                OutputStream::Stderr => std::io::stderr().lock().write_all(data),
            };
        }
        if let Some(f) = self.chunk.as_mut() {
            f(data);
        }
        if let Some(f) = self.line.as_mut() {
            self.pending.extend_from_slice(data);
            let mut start = 0;
            while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
                let line = &self.pending[start..start + nl];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                f(&String::from_utf8_lossy(line));
                start += nl + 1;
            }
            self.pending.drain(..start);
        }
    }

    /// Delivers a last line that had no newline.
    fn finish(&mut self) {
        if let (Some(f), false) = (self.line.as_mut(), self.pending.is_empty()) {
            f(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

/// A command to run in a sandbox, configured with builder methods and run by `.await` (or
/// [`Exec::run_blocking`] from the [`crate::blocking`] facade). No shell is involved: `argv[0]` is looked up
/// on the sandbox's `PATH`.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// use std::time::Duration;
/// let mut lines = 0;
/// let r = sb
///     .exec(["python3", "train.py"])
///     .on_stdout(|chunk| eprint!("{}", String::from_utf8_lossy(chunk)))
///     .on_stderr_line(|line| { lines += 1; eprintln!("[err] {line}") })
///     .env("EPOCHS", "3")
///     .cwd("/work")
///     .timeout(Duration::from_secs(30))
///     .check(true)
///     .await?;
/// # Ok(()) }
/// ```
pub struct Exec<'a> {
    sb: &'a Sandbox,
    spec: ExecSpec,
    check: bool,
    capture: bool,
    sinks: [Sinks<'a>; 2],
}

impl<'a> Exec<'a> {
    pub(crate) fn new(sb: &'a Sandbox, argv: Vec<String>) -> Self {
        Self {
            sb,
            spec: ExecSpec { argv, ..ExecSpec::default() },
            check: false,
            capture: true,
            sinks: Default::default(),
        }
    }

    /// Print output to this process's stdout and stderr as it arrives.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // Long jobs show progress in this terminal as they go, and the output is still in the result.
    /// let r = sb.exec(["python3", "-m", "unittest", "discover", "-v"]).stream_output(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn stream_output(mut self, on: bool) -> Self {
        self.sinks[0].print = on;
        self.sinks[1].print = on;
        self
    }
    /// Called with each stdout chunk as it arrives (a chunk may end mid-line).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut sent = 0;
    /// sb.exec(["tar", "-cf", "-", "/work"])
    ///     .on_stdout(|chunk| { sent += chunk.len(); eprint!("\r{sent} bytes archived") })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_stdout(mut self, f: impl FnMut(&[u8]) + Send + 'a) -> Self {
        self.sinks[0].chunk = Some(Box::new(f));
        self
    }
    /// Called with each stderr chunk as it arrives (a chunk may end mid-line).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // A progress bar redraws itself with `\r` and never ends its line, so only chunks show it live.
    /// sb.exec(["python3", "train.py"])
    ///     .on_stderr(|chunk| eprint!("{}", String::from_utf8_lossy(chunk)))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_stderr(mut self, f: impl FnMut(&[u8]) + Send + 'a) -> Self {
        self.sinks[1].chunk = Some(Box::new(f));
        self
    }
    /// Called with each complete stdout line (without its `\n` or `\r\n`, decoded as UTF-8 with
    /// replacement); a last line without a newline is delivered when the command ends.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// sb.exec(["python3", "train.py"])
    ///     .on_stdout_line(|line| if let Some(loss) = line.strip_prefix("loss=") { println!("loss {loss}") })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_stdout_line(mut self, f: impl FnMut(&str) + Send + 'a) -> Self {
        self.sinks[0].line = Some(Box::new(f));
        self
    }
    /// Like [`Exec::on_stdout_line`], for stderr.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut warnings = Vec::new();
    /// sb.exec(["python3", "-W", "always", "train.py"])
    ///     .on_stderr_line(|line| if line.contains("Warning") { warnings.push(line.to_owned()) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_stderr_line(mut self, f: impl FnMut(&str) + Send + 'a) -> Self {
        self.sinks[1].line = Some(Box::new(f));
        self
    }
    /// Kill the command's whole process tree after `d`; the result then is [`Error::Timeout`] carrying the
    /// output printed so far.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use std::time::Duration;
    /// // A hung test fails the run here instead of holding the sandbox until its lifetime runs out.
    /// sb.exec(["python3", "-m", "unittest", "discover"]).timeout(Duration::from_secs(300)).await?;
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.spec.timeout = Some(d);
        self
    }
    /// Turn a non-zero exit into [`Error::ExecutionFailed`] carrying the result.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // Later steps need this one; `?` stops here with its stderr in the error.
    /// sb.exec(["sh", "-c", "mkdir -p /work/data && cp /tmp/*.csv /work/data"]).check(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn check(mut self, on: bool) -> Self {
        self.check = on;
        self
    }
    /// Sets an environment variable for this command.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // Python block-buffers a piped stdout; unbuffered, its prints stream as they happen.
    /// sb.exec(["python3", "train.py"]).env("PYTHONUNBUFFERED", "1").stream_output(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.push((key.into(), value.into()));
        self
    }
    /// Working directory for this command.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// sb.exec(["python3", "-m", "unittest", "discover"]).cwd("/work/project").check(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.spec.cwd = Some(dir.into());
        self
    }
    /// Feed these bytes on stdin, then end of file (stdin is empty otherwise).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let count = "import sys, json; print(len(json.load(sys.stdin)))";
    /// let r = sb.exec(["python3", "-c", count]).stdin("[1, 2, 3]").await?;
    /// assert_eq!(r.stdout_text().trim(), "3");
    /// # Ok(()) }
    /// ```
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.spec.stdin = Some(data.into());
        self
    }

    /// Whether to keep the output in the [`ExecResult`] (default `true`). Turn it off for commands that
    /// print gigabytes (long training runs): the callbacks and print-through still see every byte, and
    /// memory stays flat.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut bytes = 0;
    /// let r = sb.exec(["sh", "-c", "yes | head -c 100000000"]).on_stdout(|c| bytes += c.len()).capture(false).await?;
    /// assert!(r.stdout.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn capture(mut self, on: bool) -> Self {
        self.capture = on;
        self
    }

    /// Runs the command to its end. Same as `.await`.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let (compiled, tested) = tokio::join!(
    ///     sb.exec(["python3", "-m", "compileall", "-q", "src"]).run(),
    ///     sb.exec(["python3", "-m", "unittest", "discover", "tests"]).run(),
    /// );
    /// # compiled?; tested?;
    /// # Ok(()) }
    /// ```
    pub async fn run(mut self) -> Result<ExecResult> {
        let command = self.spec.argv.clone();
        let timeout = self.spec.timeout;
        let mut stream = self.sb.client.exec(&self.sb.id, self.spec).await?;
        let mut out = [Vec::new(), Vec::new()];
        loop {
            match stream.next().await? {
                Some(ExecEvent::Output { stream: which, data, .. }) => {
                    let i = (which == OutputStream::Stderr) as usize;
                    self.sinks[i].deliver(which, &data);
                    if self.capture {
                        out[i].extend_from_slice(&data);
                    }
                }
                Some(ExecEvent::Exit(x)) => {
                    self.sinks.iter_mut().for_each(Sinks::finish);
                    let [stdout, stderr] = out;
                    let returncode = x.code.unwrap_or_else(|| -x.signal.unwrap_or(0));
                    let result = ExecResult { returncode, stdout, stderr };
                    return match (x.timed_out, self.check && returncode != 0) {
                        (true, _) => Err(Error::Timeout { command, timeout: timeout.unwrap_or_default(), result }),
                        (false, true) => Err(Error::ExecutionFailed { command, result }),
                        (false, false) => Ok(result),
                    };
                }
                None => {
                    return Err(Error::SandboxTerminated {
                        id: self.sb.id.clone(),
                        detail: "the exec stream ended without an exit".into(),
                    });
                }
            }
        }
    }

    /// Runs the command to its end from synchronous code, on the blocking facade's runtime.
    ///
    /// ```no_run
    /// # fn demo() -> hangar::Result<()> {
    /// let sb = hangar::blocking::Sandbox::create(hangar::Sandbox::builder())?;
    /// let r = sb.exec(["echo", "hi"]).stream_output(true).run_blocking()?;
    /// # Ok(()) }
    /// ```
    pub fn run_blocking(self) -> Result<ExecResult> {
        crate::blocking::runtime()?.block_on(self.run())
    }
}

impl<'a> IntoFuture for Exec<'a> {
    type Output = Result<ExecResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<ExecResult>> + Send + 'a>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
