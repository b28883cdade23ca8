use crate::{Error, ExecHandle, Result, Sandbox};
use hangar_types::{Ending, ExecEnd, ExecEvent, ExecSpec, OnDisconnect, Output, OutputStream, Usage};
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
    /// The exec's id (to attach to it again while its journal is kept).
    pub exec_id: String,
    /// How it ended: exited, signaled, timed out, cancelled, OOM-killed, ...
    pub ending: Ending,
    /// Wall time, CPU time and peak memory of its whole process tree (its own cgroup).
    pub usage: Usage,
}

impl ExecResult {
    pub(crate) fn from_end(exec_id: &str, end: &ExecEnd, stdout: Vec<u8>, stderr: Vec<u8>) -> Self {
        ExecResult {
            returncode: end.returncode(),
            stdout,
            stderr,
            exec_id: exec_id.to_string(),
            ending: end.ending.clone(),
            usage: end.usage,
        }
    }

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
pub(crate) struct Sinks<'a> {
    chunk: Option<ChunkFn<'a>>,
    line: Option<LineFn<'a>>,
    lines: LineBuffer,
    print: bool,
}

/// Cuts a stream of chunks into whole lines, however the chunks split them: each line without its `\n` or
/// `\r\n`, decoded as UTF-8 with replacement, and a last line without a newline from
/// [`LineBuffer::finish`]. What [`Exec::on_stdout_line`] uses, for callers that deliver output themselves.
///
/// ```
/// let mut lines = Vec::new();
/// let mut buf = hangar::LineBuffer::default();
/// for chunk in [&b"loss=1\nlo"[..], b"ss=0.5\r\ntail"] {
///     buf.push(chunk, |line| lines.push(line.to_string()));
/// }
/// buf.finish(|line| lines.push(line.to_string()));
/// assert_eq!(lines, ["loss=1", "loss=0.5", "tail"]);
/// ```
#[derive(Default, Debug, Clone)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Adds a chunk and hands every line it completes to `f`.
    ///
    /// ```
    /// let mut n = 0;
    /// hangar::LineBuffer::default().push(b"a\nb\nc", |_| n += 1);
    /// assert_eq!(n, 2);
    /// ```
    pub fn push(&mut self, data: &[u8], mut f: impl FnMut(&str)) {
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

    /// Hands a last line that had no newline to `f` (nothing when the stream ended with one).
    ///
    /// ```
    /// let mut buf = hangar::LineBuffer::default();
    /// buf.push(b"done", |_| unreachable!());
    /// let mut last = String::new();
    /// buf.finish(|l| last = l.to_string());
    /// assert_eq!(last, "done");
    /// ```
    pub fn finish(&mut self, mut f: impl FnMut(&str)) {
        if !self.pending.is_empty() {
            f(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
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
            self.lines.push(data, f);
        }
    }

    /// Delivers a last line that had no newline.
    fn finish(&mut self) {
        if let Some(f) = self.line.as_mut() {
            self.lines.finish(f);
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
    /// Bytes to feed on stdin, then end of file.
    input: Option<Vec<u8>>,
    /// Set for [`Sandbox::attach`]: the exec to follow and where from.
    attach: Option<(String, [u64; 2])>,
    keepalive: Option<Duration>,
    check: bool,
    capture: bool,
    sinks: [Sinks<'a>; 2],
}

impl<'a> Exec<'a> {
    pub(crate) fn new(sb: &'a Sandbox, argv: Vec<String>) -> Self {
        Self {
            sb,
            spec: ExecSpec::new(argv),
            input: None,
            attach: None,
            keepalive: None,
            check: false,
            capture: true,
            sinks: Default::default(),
        }
    }

    pub(crate) fn attach(sb: &'a Sandbox, exec: String) -> Self {
        let mut e = Self::new(sb, Vec::new());
        e.attach = Some((exec, [0, 0]));
        e
    }

    /// Gives the exec an id of your choosing. Starting an id that exists finds that exec (running or
    /// finished) instead of running the command again, so a retry after a lost connection is safe.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// // Run this twice (say, after a crash): the migration runs once, both calls get its result.
    /// let r = sb.exec(["python3", "migrate.py"]).id("migrate-2026-11-25").await?;
    /// # Ok(()) }
    /// ```
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.spec.id = Some(id.into());
        self
    }

    /// Runs the command under a pseudo-terminal of `rows` × `cols`: programs see a TTY (prompts, colours,
    /// line editing), their output arrives on stdout, and [`ExecHandle::resize`] changes the size.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let r = sb.exec(["stty", "size"]).tty(40, 100).await?;
    /// assert_eq!(r.stdout_text().trim(), "40 100");
    /// # Ok(()) }
    /// ```
    pub fn tty(mut self, rows: u16, cols: u16) -> Self {
        self.spec.output = Output::Pty { rows, cols };
        self
    }

    /// stdout and stderr share one pipe, so their interleaving is exactly what the command wrote; all output
    /// then arrives as stdout.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let r = sb.exec(["sh", "-c", "echo 1; echo 2 >&2; echo 3"]).merged(true).await?;
    /// assert_eq!(r.stdout_text(), "1\n2\n3\n");
    /// # Ok(()) }
    /// ```
    pub fn merged(mut self, on: bool) -> Self {
        match (on, self.spec.output) {
            (true, _) => self.spec.output = Output::Merged,
            (false, Output::Merged) => self.spec.output = Output::Split,
            (false, _) => {}
        }
        self
    }

    /// What happens to the command when no client is attached any more (default: it keeps running and its
    /// output is kept for [`Sandbox::attach`]; `Kill` ends its tree when nobody re-attached within the
    /// grace). A dropped `Exec` future or [`ExecHandle`] counts as a client that left.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use hangar::OnDisconnect;
    /// sb.exec(["python3", "notebook_cell.py"])
    ///     .on_disconnect(OnDisconnect::Kill { grace_ms: 30_000 })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_disconnect(mut self, policy: OnDisconnect) -> Self {
        self.spec.on_disconnect = policy;
        self
    }

    /// How long the exec's output is kept after it ended and its last client left (default 10 minutes).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use std::time::Duration;
    /// let h = sb.exec(["make", "all"]).retain(Duration::from_secs(3600)).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn retain(mut self, d: Duration) -> Self {
        self.spec.retain = Some(d);
        self
    }

    /// Bytes of output kept per stream (default 128 MiB: the first 8 MiB and the latest 120 MiB). Beyond it,
    /// while no client is attached, the oldest bytes after the head are dropped (the head and the tail
    /// survive) and a client that attaches later is told the exact range ([`ExecEvent::Gap`],
    /// [`Error::IncompleteOutput`]); while a client is attached nothing it has not read is dropped: the
    /// command waits for it instead (it runs at most 16 MiB ahead of its slowest client). Of what clients have
    /// read, the head and at least the last 64 MiB are kept. A cap of at least 89 MiB makes the journal a ring
    /// that is written over in place, the fastest way to stream; a cap above 128 MiB gives back the memory of
    /// what was read.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// sb.exec(["python3", "chatty.py"]).journal_cap(64 << 20).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn journal_cap(mut self, bytes: u64) -> Self {
        self.spec.journal_cap = Some(bytes);
        self
    }

    /// Keeps stdin open for [`ExecHandle::write_stdin`] (use with [`Exec::start`]).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut h = sb.exec(["python3", "-u", "repl.py"]).open_stdin().start().await?;
    /// h.write_stdin("1 + 1\n").await?;
    /// # Ok(()) }
    /// ```
    pub fn open_stdin(mut self) -> Self {
        self.spec.stdin = true;
        self
    }

    /// Against a server: ask for a keepalive frame after this long without output (default 15 s), so
    /// proxies never see an idle stream; a stream silent for three periods is resumed on a new connection.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use std::time::Duration;
    /// sb.exec(["sleep", "7200"]).keepalive(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = Some(every);
        self
    }

    /// For [`Sandbox::attach`]: start from these offsets (stdout, stderr) instead of the beginning, e.g.
    /// the [`ExecHandle::position`] a previous client reached.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let rest = sb.attach("train-42").from_offsets(1 << 20, 0).await?;
    /// # Ok(()) }
    /// ```
    pub fn from_offsets(mut self, stdout: u64, stderr: u64) -> Self {
        if let Some((_, from)) = &mut self.attach {
            *from = [stdout, stderr];
        }
        self
    }

    /// Starts the command (or attaches) and returns a handle for typed events, stdin, resize and signals
    /// instead of running it to its end. Callbacks set on this `Exec` are not used by the handle.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["python3", "train.py"]).start().await?;
    /// println!("started exec {}", h.id());
    /// let r = h.wait().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(self) -> Result<ExecHandle> {
        let client = &self.sb.client;
        match self.attach {
            None => client.exec(&self.sb.id, self.spec, self.input, self.keepalive).await,
            Some((exec, from)) => {
                let start = crate::client::Start { from, ..Default::default() };
                client.attach(&self.sb.id, &exec, start, self.keepalive).await
            }
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
        self.spec.stdin = true;
        self.input = Some(data.into());
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

    /// Starts the command and returns an [`ExecRun`]: its events one at a time, ending with the same result
    /// or typed error as awaiting this `Exec` (callbacks set here are not called; deliver output yourself).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut run = sb.exec(["seq", "100000"]).capture(false).events().await?;
    /// let mut lines = 0;
    /// while let Some(ev) = run.next_event().await? {
    ///     if let hangar::ExecEvent::Output { data, .. } = ev {
    ///         lines += data.iter().filter(|&&b| b == b'\n').count();
    ///     }
    /// }
    /// run.finish().await?;
    /// assert_eq!(lines, 100000);
    /// # Ok(()) }
    /// ```
    pub async fn events(self) -> Result<ExecRun> {
        let (capture, check, timeout) = (self.capture, self.check, self.spec.timeout);
        let handle = self.start().await?;
        Ok(ExecRun::new(handle, capture, check, timeout))
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
        let mut sinks = std::mem::take(&mut self.sinks);
        let mut run = self.events().await?;
        while let Some(ev) = run.next_event().await? {
            if let ExecEvent::Output { stream, data, .. } = &ev {
                sinks[stream.index()].deliver(*stream, data);
            }
        }
        sinks.iter_mut().for_each(Sinks::finish);
        run.finish().await
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

/// An exec followed event by event that ends exactly like awaiting its [`Exec`]: output kept (unless
/// [`Exec::capture`] is off), and the same [`ExecResult`] or typed error (`check`, timeout, start failure,
/// lost bytes) from [`ExecRun::finish`]. For callers that deliver output themselves (the Python SDK does),
/// with the backpressure of awaiting each event. From [`Exec::events`].
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// use hangar::ExecEvent;
/// let mut run = sb.exec(["sh", "-c", "echo hi; exit 3"]).check(true).events().await?;
/// while let Some(ev) = run.next_event().await? {
///     if let ExecEvent::Output { data, .. } = ev {
///         print!("{}", String::from_utf8_lossy(&data));
///     }
/// }
/// let err = run.finish().await.unwrap_err(); // check(true): exit 3 is an error carrying the result
/// assert!(matches!(err, hangar::Error::ExecutionFailed { .. }));
/// # Ok(()) }
/// ```
pub struct ExecRun {
    handle: ExecHandle,
    out: [Vec<u8>; 2],
    capture: bool,
    check: bool,
    timeout: Option<Duration>,
    /// The exit once it arrived, or the [`Error::IncompleteOutput`] that took its place.
    end: Option<Result<ExecEnd>>,
}

impl ExecRun {
    pub(crate) fn new(handle: ExecHandle, capture: bool, check: bool, timeout: Option<Duration>) -> Self {
        ExecRun { handle, out: Default::default(), capture, check, timeout, end: None }
    }

    /// The exec's handle: its id, position and [`ExecHandle::input`] (stdin, resize, signals, kill).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let run = sb.exec(["sleep", "infinity"]).events().await?;
    /// run.handle().kill().await?;
    /// assert_eq!(run.finish().await?.ending, hangar::Ending::Cancelled);
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> &ExecHandle {
        &self.handle
    }

    /// The next event (output, gap, and last the exit); `None` once the exec ended. An error here (the
    /// connection or sandbox is gone) ends the run; lost bytes do not: they are reported by
    /// [`ExecRun::finish`] with the output that did arrive.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut run = sb.exec(["seq", "3"]).events().await?;
    /// while let Some(ev) = run.next_event().await? {
    ///     println!("{ev:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.end.is_some() {
            return Ok(None);
        }
        match self.handle.next_event().await {
            Ok(Some(ev)) => {
                match &ev {
                    ExecEvent::Output { stream, data, .. } if self.capture => {
                        self.out[stream.index()].extend_from_slice(data)
                    }
                    ExecEvent::Exit(end) => self.end = Some(Ok(end.clone())),
                    _ => {}
                }
                Ok(Some(ev))
            }
            Ok(None) => Err(Error::Internal(format!("exec {}: events ended without an exit", self.handle.id()))),
            Err(e @ Error::IncompleteOutput { .. }) => {
                self.end = Some(Err(e));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Follows the exec to its end (if the events were not all read) and returns what awaiting the
    /// [`Exec`] returns.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let run = sb.exec(["python3", "-c", "print(6 * 7)"]).events().await?;
    /// assert_eq!(run.finish().await?.stdout_text().trim(), "42");
    /// # Ok(()) }
    /// ```
    pub async fn finish(mut self) -> Result<ExecResult> {
        while self.next_event().await?.is_some() {}
        let [stdout, stderr] = std::mem::take(&mut self.out);
        let h = &self.handle;
        let command = h.command().to_vec();
        let end = match self.end.take().expect("the loop above ends at the end") {
            Ok(end) => end,
            Err(Error::IncompleteOutput { command, mut result, detail }) => {
                (result.stdout, result.stderr) = (stdout, stderr);
                return Err(Error::IncompleteOutput { command, result, detail });
            }
            Err(e) => return Err(e),
        };
        let result = ExecResult::from_end(h.id(), &end, stdout, stderr);
        if !h.gaps.is_empty() {
            let lost: Vec<String> = h.gaps.iter().map(|(s, from, to)| format!("{s:?} bytes {from}..{to}")).collect();
            let detail = format!(
                "lost: {} (dropped by the journal cap while no client was attached, or after another client \
                 had them, or never journaled because the host's disk stayed full)",
                lost.join(", ")
            );
            return Err(Error::IncompleteOutput { command, result: Box::new(result), detail });
        }
        match &end.ending {
            Ending::FailedToStart(f) => Err(Error::from_start_failure(f)),
            Ending::SandboxGone => Err(Error::SandboxTerminated {
                id: h.sandbox_id().to_string(),
                detail: format!("the sandbox ended while exec {} ran", h.id()),
            }),
            Ending::TimedOut => {
                Err(Error::Timeout { command, timeout: self.timeout.unwrap_or_default(), result: Box::new(result) })
            }
            _ if self.check && result.returncode != 0 => {
                Err(Error::ExecutionFailed { command, result: Box::new(result) })
            }
            _ => Ok(result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Line callbacks get whole lines however the chunks split them, without `\n` or `\r\n`, and a last line
    /// without a newline at the end; chunk callbacks get the chunks as they came.
    #[test]
    fn lines_are_whole_whatever_the_chunks() {
        let (mut lines, mut chunks) = (Vec::new(), Vec::new());
        {
            let mut sinks = Sinks {
                chunk: Some(Box::new(|c: &[u8]| chunks.push(c.to_vec()))),
                line: Some(Box::new(|l: &str| lines.push(l.to_string()))),
                ..Sinks::default()
            };
            for piece in [&b"lo"[..], b"ss=1\nloss", b"=0.5\r\n", b"\n", b"\xff tail"] {
                sinks.deliver(OutputStream::Stdout, piece);
            }
            sinks.finish();
        }
        assert_eq!(lines, ["loss=1", "loss=0.5", "", "\u{fffd} tail"]);
        assert_eq!(chunks.concat(), b"loss=1\nloss=0.5\r\n\n\xff tail");
        assert_eq!(chunks.len(), 5);
    }
}
