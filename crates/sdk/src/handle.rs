//! A running (or finished) exec you hold on to: its typed events, its stdin, its terminal, its signals.

use crate::remote::RemoteExec;
use crate::{Client, Error, ExecResult, Result};
#[cfg(feature = "embedded")]
use hangar_engine::{Engine, ExecControl, ExecStream, StdinWriter};
use hangar_types::{Ending, ExecEnd, ExecEvent, Next, OutputStream};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// Unacknowledged stdin a remote writer may have in flight before [`ExecHandle::write_stdin`] waits.
const STDIN_WINDOW: u64 = 8 << 20;

pub(crate) enum Inner {
    #[cfg(feature = "embedded")]
    Embedded(Box<ExecStream>),
    Remote(RemoteExec),
}

/// The input side of an exec: stdin, terminal size and signals, usable from another task while the
/// [`ExecHandle`] reads events (clone it freely). From [`ExecHandle::input`].
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// let mut h = sb.exec(["cat"]).open_stdin().start().await?;
/// let input = h.input();
/// tokio::spawn(async move {
///     input.write(b"hello\n").await?;
///     input.close().await
/// });
/// assert_eq!(h.wait().await?.stdout_text(), "hello\n");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ExecInput {
    sandbox: String,
    exec: String,
    client: Client,
    kind: InputKind,
}

#[derive(Clone)]
enum InputKind {
    #[cfg(feature = "embedded")]
    Embedded {
        engine: Arc<Engine>,
        control: ExecControl,
        writer: Arc<tokio::sync::Mutex<Option<StdinWriter>>>,
    },
    Remote(Arc<crate::remote::StdinBuffer>),
}

/// A handle on one exec, from [`crate::Exec::start`] or [`crate::Sandbox::attach`]: its output as typed
/// events ([`ExecHandle::next_event`], or [`ExecHandle::into_stream`] as a `Stream`), its stdin, its terminal
/// size and its signals. Against a server the handle resumes by itself when the connection breaks (or the
/// server restarts): the events continue at the exact byte where they stopped.
///
/// Every event is checked: offsets must follow each other, and at the end the totals (and, for a stream
/// read from its start without gaps, the CRC-32 of each stream) must match what the command wrote;
/// otherwise the last item is [`Error::IncompleteOutput`] instead of the exit.
///
/// Dropping the handle detaches; the exec keeps running or is killed as its
/// [`crate::Exec::on_disconnect`] policy says.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// use hangar::{ExecEvent, OutputStream};
/// let mut h = sb.exec(["sh", "-c", "echo hi; echo oops >&2"]).start().await?;
/// while let Some(ev) = h.next_event().await? {
///     match ev {
///         ExecEvent::Output { stream: OutputStream::Stdout, offset, data } => println!("out@{offset}: {data:?}"),
///         ExecEvent::Output { offset, data, .. } => eprintln!("err@{offset}: {data:?}"),
///         ExecEvent::Gap { stream, from, to } => eprintln!("{stream:?} lost {from}..{to}"),
///         ExecEvent::Exit(end) => println!("ended: {:?}", end.ending),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct ExecHandle {
    sandbox: String,
    id: String,
    command: Vec<String>,
    inner: Inner,
    input: ExecInput,
    from: [u64; 2],
    received: [u64; 2],
    crc: [crc32fast::Hasher; 2],
    /// Whether some of a stream's output went to a descriptor without passing through here (not in `crc`).
    unseen: [bool; 2],
    pub(crate) gaps: Vec<(OutputStream, u64, u64)>,
    /// Bytes journaled when the handle attached, and whether the exec had ended then.
    pub(crate) journaled: ([u64; 2], bool),
    done: bool,
}

impl ExecHandle {
    pub(crate) fn new(client: Client, sandbox: &str, command: Vec<String>, inner: Inner, from: [u64; 2]) -> Self {
        let id = match &inner {
            #[cfg(feature = "embedded")]
            Inner::Embedded(s) => s.id().to_string(),
            Inner::Remote(r) => r.exec.clone(),
        };
        let kind = match &inner {
            #[cfg(feature = "embedded")]
            Inner::Embedded(s) => {
                let engine = client.engine().expect("an embedded stream comes from an embedded client").clone();
                InputKind::Embedded { engine, control: s.control(), writer: Default::default() }
            }
            Inner::Remote(r) => InputKind::Remote(r.stdin.clone()),
        };
        let input = ExecInput { sandbox: sandbox.to_string(), exec: id.clone(), client, kind };
        let journaled = match &inner {
            #[cfg(feature = "embedded")]
            Inner::Embedded(s) => (s.info().written, s.info().end.is_some()),
            Inner::Remote(r) => r.journaled,
        };
        Self {
            sandbox: sandbox.to_string(),
            id,
            command,
            inner,
            input,
            from,
            received: from,
            crc: Default::default(),
            unseen: [false; 2],
            gaps: Vec::new(),
            journaled,
            done: false,
        }
    }

    /// The exec's id: attach to it again with [`crate::Sandbox::attach`], from this or another process.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["python3", "train.py"]).start().await?;
    /// std::fs::write("exec-id.txt", h.id()).ok();
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sandbox the exec runs in.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["true"]).start().await?;
    /// assert_eq!(h.sandbox_id(), sb.id());
    /// # Ok(()) }
    /// ```
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox
    }

    /// The command (argv) the exec runs.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.attach("nightly").start().await?;
    /// println!("{} runs {:?}", h.id(), h.command());
    /// # Ok(()) }
    /// ```
    pub fn command(&self) -> &[String] {
        &self.command
    }

    /// Offsets (stdout, stderr) up to which output has been delivered: what to resume from with
    /// [`crate::Exec::from_offsets`] in another process.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut h = sb.exec(["python3", "train.py"]).start().await?;
    /// h.next_event().await?;
    /// let [out, err] = h.position();
    /// println!("resume later with .from_offsets({out}, {err})");
    /// # Ok(()) }
    /// ```
    pub fn position(&self) -> [u64; 2] {
        self.received
    }

    /// The next event, `Ok(None)` after the exit. Output chunks are raw bytes (a chunk may end mid-line).
    /// A stream that does not add up ends with [`Error::IncompleteOutput`] instead of the exit.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut h = sb.exec(["seq", "3"]).start().await?;
    /// let mut total = 0;
    /// while let Some(ev) = h.next_event().await? {
    ///     if let hangar::ExecEvent::Output { data, .. } = ev { total += data.len() }
    /// }
    /// assert_eq!(total, 6);
    /// # Ok(()) }
    /// ```
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.done {
            return Ok(None);
        }
        let ev = match &mut self.inner {
            #[cfg(feature = "embedded")]
            Inner::Embedded(stream) => stream.next().await.map_err(Error::from),
            Inner::Remote(r) => r.next().await,
        };
        let ev = match ev {
            Ok(Some(ev)) => ev,
            Ok(None) => return Err(self.ended_early()),
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        if let ExecEvent::Output { stream, offset, data } = &ev {
            self.crc[stream.index()].update(data);
            self.count(*stream, *offset, data.len() as u64)?;
        }
        self.account(&ev)?;
        Ok(Some(ev))
    }

    /// Follows the exec to its end with its stdout written to `stdout` and its stderr to `stderr` as it comes,
    /// and returns how it ended; gaps in the output (see [`ExecEvent::Gap`]) are passed to `on_gap` when they
    /// come. With the embedded engine the output goes from the journal to the descriptors by the kernel
    /// (`sendfile`: into a pipe, page references move rather than bytes), never through this process, which is
    /// how `hangar exec` keeps pace with a pipe; from a server it is written. A full pipe slows the command.
    /// Output that did not pass through this process is checked by its length, not its checksum. A
    /// descriptor that fails (a pipe whose reader left) ends this with an error.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use std::os::fd::AsFd;
    /// let mut h = sb.exec(["python3", "train.py"]).start().await?;
    /// let (out, err) = (std::io::stdout(), std::io::stderr());
    /// let end = h.write_output_to(out.as_fd(), err.as_fd(), |s, from, to| eprintln!("{s:?} lost {from}..{to}")).await?;
    /// std::process::exit(end.shell_code().into());
    /// # }
    /// ```
    pub async fn write_output_to(
        &mut self,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
        mut on_gap: impl FnMut(OutputStream, u64, u64),
    ) -> Result<ExecEnd> {
        let to = [stdout, stderr];
        // From a server the bytes come here, and are written through one duplicate of each descriptor.
        let mut written_through: Option<[std::fs::File; 2]> = None;
        loop {
            if self.done {
                return Err(Error::InvalidArgument(format!(
                    "exec {}: its events were already read to the end",
                    self.id
                )));
            }
            let next = match &mut self.inner {
                #[cfg(feature = "embedded")]
                Inner::Embedded(stream) => stream.next_sent(to).await.map_err(Error::from),
                Inner::Remote(r) => match r.next().await {
                    Ok(Some(ExecEvent::Output { stream, offset, data })) => {
                        let local = |e: std::io::Error| Error::LocalIo(format!("writing {stream:?}: {e}"));
                        let out = match &mut written_through {
                            Some(files) => files,
                            None => written_through.insert([
                                std::fs::File::from(to[0].try_clone_to_owned().map_err(local)?),
                                std::fs::File::from(to[1].try_clone_to_owned().map_err(local)?),
                            ]),
                        };
                        std::io::Write::write_all(&mut out[stream.index()], &data).map_err(local)?;
                        self.crc[stream.index()].update(&data);
                        self.count(stream, offset, data.len() as u64)?;
                        continue;
                    }
                    other => other.map(|ev| ev.map(Next::Event)),
                },
            };
            match next {
                Ok(Some(Next::Sent { stream, offset, len })) => {
                    self.unseen[stream.index()] = true;
                    self.count(stream, offset, len)?;
                }
                Ok(Some(Next::Event(ev))) => {
                    self.account(&ev)?;
                    match ev {
                        ExecEvent::Gap { stream, from, to } => on_gap(stream, from, to),
                        ExecEvent::Exit(end) => return Ok(end),
                        ExecEvent::Output { .. } => unreachable!("output is sent"),
                    }
                }
                Ok(None) => return Err(self.ended_early()),
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
    }

    fn ended_early(&mut self) -> Error {
        self.done = true;
        Error::SandboxTerminated {
            id: self.sandbox.clone(),
            detail: format!("the stream of exec {} ended without an exit", self.id),
        }
    }

    /// Counts `len` bytes of `stream` delivered at `offset`, which must be where the last ended.
    fn count(&mut self, stream: OutputStream, offset: u64, len: u64) -> Result<()> {
        let i = stream.index();
        if offset != self.received[i] {
            self.done = true;
            let detail = format!("{stream:?} bytes {}..{offset} never arrived", self.received[i]);
            return Err(self.incomplete(None, detail));
        }
        self.received[i] += len;
        Ok(())
    }

    /// Takes note of a gap or the end (checking, at the end, that everything added up).
    fn account(&mut self, ev: &ExecEvent) -> Result<()> {
        match ev {
            ExecEvent::Output { .. } => {}
            ExecEvent::Gap { stream, from, to } => {
                self.gaps.push((*stream, *from, *to));
                self.received[stream.index()] = *to;
            }
            ExecEvent::Exit(end) => {
                self.done = true;
                if let Some(detail) = self.verify(end) {
                    return Err(self.incomplete(Some(end), detail));
                }
            }
        }
        Ok(())
    }

    fn verify(&self, end: &ExecEnd) -> Option<String> {
        if self.received != end.bytes {
            return Some(format!(
                "the command wrote {}+{} bytes (stdout+stderr) but {}+{} arrived",
                end.bytes[0], end.bytes[1], self.received[0], self.received[1]
            ));
        }
        let whole = self.from == [0, 0] && self.gaps.is_empty() && end.ending != Ending::SandboxGone;
        for (i, name) in ["stdout", "stderr"].iter().enumerate() {
            let got = self.crc[i].clone().finalize();
            if whole && !self.unseen[i] && got != end.crc32[i] {
                return Some(format!("{name} checksum {got:08x} differs from the command's {:08x}", end.crc32[i]));
            }
        }
        None
    }

    fn incomplete(&self, end: Option<&ExecEnd>, detail: String) -> Error {
        let result = end.map(|e| ExecResult::from_end(&self.id, e, Vec::new(), Vec::new())).unwrap_or_default();
        Error::IncompleteOutput { command: self.command.clone(), result: Box::new(result), detail }
    }

    /// The events as a `Stream` (for `StreamExt` combinators); ends after the exit or the first error.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// use tokio_stream::StreamExt;
    /// let h = sb.exec(["seq", "1000"]).start().await?;
    /// let chunks: Vec<_> = h.into_stream().collect().await;
    /// println!("{} events", chunks.len());
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = Result<ExecEvent>> + Send + 'static {
        futures_util::stream::unfold(Some(self), |h| async move {
            let mut h = h?;
            match h.next_event().await {
                Ok(Some(ev)) => Some((Ok(ev), Some(h))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// The input side (stdin, resize, signals) as a separate, cloneable value, for writing from another
    /// task while this handle reads events.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["python3", "-i"]).tty(24, 80).start().await?;
    /// let input = h.input();
    /// input.write("print(40 + 2)\n").await?;
    /// # Ok(()) }
    /// ```
    pub fn input(&self) -> ExecInput {
        self.input.clone()
    }

    /// Writes to the exec's stdin (started with [`crate::Exec::open_stdin`] or a terminal). Against a
    /// server, bytes are kept until the exec acknowledges them and re-sent after a reconnect, so none is
    /// lost or doubled; this waits when several MiB are still unacknowledged.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut h = sb.exec(["sha256sum"]).open_stdin().start().await?;
    /// for _ in 0..100 {
    ///     h.write_stdin(vec![b'x'; 1 << 20]).await?;
    /// }
    /// h.close_stdin().await?;
    /// let r = h.wait().await?;
    /// println!("{}", r.stdout_text());
    /// # Ok(()) }
    /// ```
    pub async fn write_stdin(&mut self, data: impl AsRef<[u8]>) -> Result<()> {
        self.input.write(data).await
    }

    /// Ends stdin (for a terminal: sends its end-of-file character, ^D).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut h = sb.exec(["wc", "-l"]).open_stdin().start().await?;
    /// h.write_stdin("a\nb\n").await?;
    /// h.close_stdin().await?;
    /// assert_eq!(h.wait().await?.stdout_text().trim(), "2");
    /// # Ok(()) }
    /// ```
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.input.close().await
    }

    /// Resizes the exec's terminal (see [`crate::Exec::tty`]), in order with its stdin: what was written before
    /// is read at the old size, what is written after at the new one (embedded, it is applied when this
    /// returns).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["bash"]).tty(24, 80).start().await?;
    /// h.resize(50, 120).await?;
    /// # Ok(()) }
    /// ```
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.input.resize(rows, cols).await
    }

    /// Sends a signal to the exec's whole process tree (SIGKILL, 9, cancels it).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["python3", "server.py"]).start().await?;
    /// h.signal(15).await?; // SIGTERM: let it shut down cleanly
    /// # Ok(()) }
    /// ```
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.input.signal(signal).await
    }

    /// Kills the exec's whole process tree; it ends as cancelled.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["sleep", "infinity"]).start().await?;
    /// h.kill().await?;
    /// assert_eq!(h.wait().await?.ending, hangar::Ending::Cancelled);
    /// # Ok(()) }
    /// ```
    pub async fn kill(&self) -> Result<()> {
        self.signal(9).await
    }

    /// Follows the exec to its end and returns its result (output from the handle's position on), like
    /// awaiting an [`crate::Exec`] without callbacks.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let h = sb.exec(["python3", "-c", "print(6 * 7)"]).start().await?;
    /// assert_eq!(h.wait().await?.stdout_text().trim(), "42");
    /// # Ok(()) }
    /// ```
    pub async fn wait(self) -> Result<ExecResult> {
        crate::exec::ExecRun::new(self, true, false, None).finish().await
    }
}

impl ExecInput {
    /// Writes to the exec's stdin; see [`ExecHandle::write_stdin`].
    ///
    /// ```no_run
    /// # async fn demo(input: hangar::ExecInput) -> hangar::Result<()> {
    /// input.write("yes\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&self, data: impl AsRef<[u8]>) -> Result<()> {
        let data = data.as_ref();
        match &self.kind {
            #[cfg(feature = "embedded")]
            InputKind::Embedded { engine, writer, .. } => {
                let mut w = writer.lock().await;
                let w = self.embedded_writer(engine, &mut w).await?;
                w.write(w.next_offset(), data).await?;
            }
            InputKind::Remote(buf) => {
                buf.wait_below(STDIN_WINDOW).await;
                buf.push(data, false);
            }
        }
        Ok(())
    }

    /// Ends stdin; see [`ExecHandle::close_stdin`].
    ///
    /// ```no_run
    /// # async fn demo(input: hangar::ExecInput) -> hangar::Result<()> {
    /// input.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) -> Result<()> {
        match &self.kind {
            #[cfg(feature = "embedded")]
            InputKind::Embedded { engine, writer, .. } => {
                let mut w = writer.lock().await;
                self.embedded_writer(engine, &mut w).await?.close().await?;
            }
            InputKind::Remote(buf) => buf.push(&[], true),
        }
        Ok(())
    }

    /// Resizes the exec's terminal; see [`ExecHandle::resize`].
    ///
    /// ```no_run
    /// # async fn demo(input: hangar::ExecInput) -> hangar::Result<()> {
    /// input.resize(50, 132).await?;
    /// # Ok(()) }
    /// ```
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        match &self.kind {
            #[cfg(feature = "embedded")]
            InputKind::Embedded { engine, control, writer } => {
                // Through stdin's connection where there is one: in order with the bytes written there, and
                // applied when this returns (on the exec's stream it would race the next line of input).
                let mut w = writer.lock().await;
                let ordered = match self.embedded_writer(engine, &mut w).await {
                    Ok(w) => w.resize(rows, cols).await?,
                    Err(_) => false, // stdin closed: nothing to keep in order with
                };
                if !ordered {
                    control.resize(rows, cols).await?;
                }
                Ok(())
            }
            InputKind::Remote(buf) => {
                buf.resize(rows, cols);
                Ok(())
            }
        }
    }

    /// Signals the exec's whole process tree; see [`ExecHandle::signal`].
    ///
    /// ```no_run
    /// # async fn demo(input: hangar::ExecInput) -> hangar::Result<()> {
    /// input.signal(2).await?; // SIGINT
    /// # Ok(()) }
    /// ```
    pub async fn signal(&self, signal: i32) -> Result<()> {
        match &self.kind {
            #[cfg(feature = "embedded")]
            InputKind::Embedded { control, .. } => Ok(control.signal(signal).await?),
            InputKind::Remote(_) => self.client.signal_exec(&self.sandbox, &self.exec, signal).await,
        }
    }

    #[cfg(feature = "embedded")]
    async fn embedded_writer<'a>(
        &self,
        engine: &Arc<Engine>,
        slot: &'a mut Option<StdinWriter>,
    ) -> Result<&'a mut StdinWriter> {
        if slot.is_none() {
            // Find where the exec's stdin stands (another writer may have fed it), and go on from there.
            let acked = engine.attach(&self.sandbox, &self.exec, [u64::MAX, u64::MAX]).await?.info().stdin_acked;
            *slot = Some(engine.open_stdin(&self.sandbox, &self.exec, acked).await?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }
}
