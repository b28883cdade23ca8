//! Execs: commands in a running sandbox, as objects with ids that outlive any client.
//!
//! The sandbox's agent journals each exec's output into files in the sandbox's state directory; an
//! [`ExecStream`] follows that journal from any offset, reading the files directly (the agent only tells it
//! how far they have grown) and acknowledging what it has consumed, so a slow consumer slows the command
//! instead of losing bytes, and a consumer that goes away (or a server that restarts) can attach again and
//! resume exactly where it stopped.

use crate::backend::agent_error;
use crate::{Engine, Error, ExecEnd, ExecEvent, ExecInfo, ExecSpec, Result};
use hangar_agent_protocol::codec::{Conn, Writer};
use hangar_agent_protocol::{Progress, Request, Response};
use hangar_types::{Next, MAIN_EXEC};
use std::os::fd::BorrowedFd;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// How [`ExecStream::next_to`] hands output on.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// As bytes in events.
    Bytes,
    /// Sent to these descriptors (stdout's, stderr's).
    Sent([BorrowedFd<'a>; 2]),
    /// Left in the journal's files, named.
    Unsent,
}

/// A reader of one exec's journal. Dropping it detaches (what happens to the exec then is its
/// [`OnDisconnect`] policy).
pub struct ExecStream {
    sandbox: String,
    /// The agent's protocol version.
    protocol: u32,
    info: ExecInfo,
    /// The agent's connection: `None` for a journal read after its sandbox ended (a stored log).
    conn: Option<(Conn, Writer)>,
    source: Source,
    progress: Progress,
    /// For the main command's log: where its journal is kept once the sandbox ended.
    kept_at: Option<std::path::PathBuf>,
    feeder: Option<AbortOnDropHandle<()>>,
    done: bool,
}

/// Where an [`ExecStream`]'s output comes from.
pub(crate) enum Source {
    /// The journal's files, read here; the agent only says how far they grew (the local backend's fast path).
    Files(hangar_journal::Reader),
    /// The journal's contents, sent by the agent on the attachment (see [`Request::Inline`]), for an engine
    /// that cannot reach the agent's files; the offsets (stdout, stderr) handed out so far.
    Inline([u64; 2]),
    /// A copy of the main command's log held here (a Pod's container log): its last `data.len()` bytes, which
    /// end at the log's end (what came before them is a gap), and the offset handed out so far.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    Copy { data: bytes::Bytes, times: Vec<(u64, u64)>, end: ExecEnd, pos: u64 },
}

/// Signals and resizes for an exec, usable while another task reads its [`ExecStream`].
#[derive(Clone)]
pub struct ExecControl {
    sandbox: String,
    exec: String,
    /// `None` for a stored log: nothing to signal, resize or hold.
    writer: Option<Writer>,
    protocol: u32,
}

impl ExecControl {
    /// Sends a signal to the exec's whole process tree. SIGKILL cancels it.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.send(&Request::Signal { exec: String::new(), signal }).await
    }

    /// Resizes the exec's terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.send(&Request::Resize { rows, cols }).await
    }

    /// Says that this reader's client left deliberately: the exec's [`crate::OnDisconnect`] policy applies
    /// from now, not after [`ExecControl::hold_across_restarts`]'s grace. Call it before dropping the stream.
    pub async fn detach(&self) -> Result<()> {
        match self.protocol >= 2 {
            true => self.send(&Request::Detach).await,
            false => Ok(()),
        }
    }

    /// Should this reader's process die (a server restarting), the exec's disconnect policy waits at least
    /// `grace` for a new reader: a server holding its clients' streams calls this, so that a restart does not
    /// cost a command whose client asked for a short grace. A no-op with agents older than version 2.
    pub async fn hold_across_restarts(&self, grace: Duration) -> Result<()> {
        match self.protocol >= 2 {
            true => self.send(&Request::Hold { grace_ms: grace.as_millis() as u64 }).await,
            false => Ok(()),
        }
    }

    async fn send(&self, req: &Request) -> Result<()> {
        let Some(writer) = &self.writer else {
            return match req {
                Request::Signal { .. } | Request::Resize { .. } => {
                    Err(Error::NotRunning { id: self.sandbox.clone(), state: crate::SandboxState::Terminated })
                }
                _ => Ok(()),
            };
        };
        writer
            .send(req)
            .await
            .map_err(|e| Error::SandboxGone { id: self.sandbox.clone(), detail: format!("exec {}: {e}", self.exec) })
    }
}

/// A writer of one exec's stdin, resumable by offset.
pub struct StdinWriter {
    sandbox: String,
    exec: String,
    conn: Conn,
    acked: u64,
    /// Stream offset of the next byte this connection sends.
    next: u64,
    /// The agent's protocol version.
    protocol: u32,
}

impl Engine {
    /// Starts `spec` in sandbox `id` (or, when `spec.id` names an exec that exists with the same command,
    /// finds it) and follows its output from the start. Fails with a typed error when the sandbox is unknown
    /// or not running or the request is invalid; a command that cannot be started is an exec that ended
    /// with [`Ending::FailedToStart`].
    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecStream> {
        spec.validate()?;
        let subject = spec.argv[0].clone();
        self.follow(id, Request::Exec(spec), &subject, [0, 0]).await
    }

    /// Like [`Engine::exec`], with `data` fed to the command's stdin (then end of file) by a task of the
    /// stream's; bytes the exec already took (a retried start of the same id) are not sent again.
    pub async fn exec_with_input(&self, id: &str, spec: ExecSpec, data: Vec<u8>) -> Result<ExecStream> {
        let mut stream = self.exec(id, ExecSpec { stdin: true, ..spec }).await?;
        if stream.info.stdin_open {
            let mut w = self.open_stdin(id, &stream.info.id, stream.info.stdin_acked).await?;
            stream.feeder = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                let start = w.acked as usize;
                for chunk in data[start.min(data.len())..].chunks(hangar_journal::CHUNK) {
                    let offset = w.next_offset();
                    if w.write(offset, chunk).await.is_err() {
                        return;
                    }
                }
                let _ = w.close().await;
            })));
        }
        Ok(stream)
    }

    /// Follows exec `exec` of sandbox `id` from offsets `from` (stdout, stderr): the bytes from there on are
    /// replayed from the journal, then followed live. [`MAIN_EXEC`] is the sandbox's log (its main command's
    /// output), which can be read after the sandbox ended too, until it is removed.
    pub async fn attach(&self, id: &str, exec: &str, from: [u64; 2]) -> Result<ExecStream> {
        if exec == MAIN_EXEC && self.get(id).await?.state.is_final() {
            return self.kept_log(id, from).await;
        }
        let followed = self.follow(id, Request::Attach { exec: exec.to_string(), from }, exec, from).await;
        match followed {
            // It is ending or ended just now: its log is read where it is kept, once the end is recorded.
            Err(Error::NotRunning { .. } | Error::SandboxGone { .. }) if exec == MAIN_EXEC => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while !self.get(id).await?.state.is_final() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                self.kept_log(id, from).await
            }
            other => other,
        }
    }

    async fn follow(&self, id: &str, req: Request, subject: &str, from: [u64; 2]) -> Result<ExecStream> {
        let crate::backend::AgentLink { mut conn, protocol, journals, kept_log, ahead } = self.link(id).await?;
        if journals.is_none() {
            conn.send(&Request::Inline).await.map_err(|e| self.gone(id, "exec", e))?;
        }
        conn.send(&req).await.map_err(|e| self.gone(id, "exec", e))?;
        let info = match conn.recv::<Response>().await.map_err(|e| self.gone(id, "exec", e))? {
            Some(Response::Exec(info)) => info,
            other => return Err(self.unexpected(id, subject, other)),
        };
        // The next request's connection, made now that the agent has started this one: right after the
        // request, it held the agent up (woken where this thread ran, it waited for the connect, and then
        // accepted it before reading the request); here both sides are idle while the command runs (A/B: 0-30
        // µs of the round trip).
        drop(ahead);
        let source = match journals {
            None => Source::Inline(from),
            Some(dir) => Source::Files(hangar_journal::Reader::new(dir.join(hangar_journal::dir(&info.id)), from)),
        };
        let kept_at = kept_log.filter(|_| info.id == MAIN_EXEC);
        let writer = conn.writer();
        Ok(ExecStream {
            sandbox: id.to_string(),
            protocol,
            info,
            conn: Some((conn, writer)),
            source,
            progress: Progress::default(),
            kept_at,
            feeder: None,
            done: false,
        })
    }

    /// The sandbox's execs, oldest first (running ones and those whose record is still kept).
    pub async fn execs(&self, id: &str) -> Result<Vec<ExecInfo>> {
        let mut conn = self.connect(id).await?;
        conn.send(&Request::ListExecs).await.map_err(|e| self.gone(id, "list execs", e))?;
        match conn.recv::<Response>().await.map_err(|e| self.gone(id, "list execs", e))? {
            Some(Response::Execs { execs }) => Ok(execs),
            other => Err(self.unexpected(id, "execs", other)),
        }
    }

    /// Signals exec `exec`'s whole process tree; SIGKILL cancels it.
    pub async fn signal_exec(&self, id: &str, exec: &str, signal: i32) -> Result<()> {
        let mut conn = self.connect(id).await?;
        let req = Request::Signal { exec: exec.to_string(), signal };
        conn.send(&req).await.map_err(|e| self.gone(id, "signal exec", e))?;
        match conn.recv::<Response>().await.map_err(|e| self.gone(id, "signal exec", e))? {
            Some(Response::Done) => Ok(()),
            other => Err(self.unexpected(id, exec, other)),
        }
    }

    /// Opens exec `exec`'s stdin for writing from `offset` on. Bytes the exec already received are skipped,
    /// so a writer that lost its connection resumes from [`StdinWriter::acked`] of a new one.
    pub async fn open_stdin(&self, id: &str, exec: &str, offset: u64) -> Result<StdinWriter> {
        let crate::backend::AgentLink { mut conn, protocol, ahead, .. } = self.link(id).await?;
        conn.send(&Request::Stdin { exec: exec.to_string(), offset }).await.map_err(|e| self.gone(id, "stdin", e))?;
        drop(ahead);
        match conn.recv::<Response>().await.map_err(|e| self.gone(id, "stdin", e))? {
            Some(Response::StdinAck { acked }) => {
                let (sandbox, exec) = (id.to_string(), exec.to_string());
                Ok(StdinWriter { sandbox, exec, conn, acked, next: offset, protocol })
            }
            other => Err(self.unexpected(id, exec, other)),
        }
    }
}

impl StdinWriter {
    /// Bytes of stdin the process has been given so far.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    async fn ack(&mut self) -> Result<u64> {
        match self.conn.recv::<Response>().await {
            Ok(Some(Response::StdinAck { acked })) => {
                self.acked = acked;
                Ok(acked)
            }
            Ok(Some(Response::Error { kind, message })) => Err(agent_error(&self.sandbox, &self.exec, kind, message)),
            other => Err(Error::SandboxGone {
                id: self.sandbox.clone(),
                detail: format!("stdin of exec {}: the agent went away ({other:?})", self.exec),
            }),
        }
    }

    /// Offset of the next byte this writer sends.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Writes `data`, which starts at stream offset `offset` (bytes this writer already sent are skipped;
    /// a hole is refused); returns once the process's stdin has taken it, with the new acknowledged offset.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64> {
        if offset > self.next {
            return Err(Error::InvalidArgument(format!(
                "stdin offset {offset} is past the {} bytes sent so far",
                self.next
            )));
        }
        let data = &data[((self.next - offset) as usize).min(data.len())..];
        if data.is_empty() {
            return Ok(self.acked);
        }
        self.next += data.len() as u64;
        let w = self.conn.writer();
        let sent = async {
            w.send(&Request::StdinData { len: data.len() as u64 }).await?;
            w.send_raw(data).await
        }
        .await;
        sent.map_err(|e| Error::SandboxGone { id: self.sandbox.clone(), detail: format!("stdin: {e}") })?;
        self.ack().await
    }

    /// Gives the exec's terminal the size `rows` × `cols`, in order with this writer's bytes: after those
    /// written before, before any written after, and applied when this returns. `false` (nothing done) with an
    /// agent older than protocol 5, which takes resizes only on the exec's stream ([`ExecControl::resize`]).
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<bool> {
        if self.protocol < 5 {
            return Ok(false);
        }
        self.conn
            .send(&Request::Resize { rows, cols })
            .await
            .map_err(|e| Error::SandboxGone { id: self.sandbox.clone(), detail: format!("stdin: {e}") })?;
        self.ack().await.map(|_| true)
    }

    /// Ends stdin (for a terminal: sends its end-of-file character).
    pub async fn close(&mut self) -> Result<u64> {
        self.conn
            .send(&Request::StdinClose)
            .await
            .map_err(|e| Error::SandboxGone { id: self.sandbox.clone(), detail: format!("stdin: {e}") })?;
        self.ack().await
    }
}

impl ExecStream {
    /// The main command's log of sandbox `sandbox` (whose record is `rec`), which ended: read from the journal
    /// kept in `dir`, whose final state is `progress`, from offsets `from`.
    pub(crate) fn kept_log(
        rec: &crate::SandboxInfo,
        dir: std::path::PathBuf,
        progress: Progress,
        from: [u64; 2],
    ) -> Self {
        let info = ExecInfo {
            id: MAIN_EXEC.to_string(),
            argv: rec.command.clone(),
            pid: 0,
            started_at_ms: rec.created_at_ms,
            tty: false,
            merged: true,
            stdin_open: false,
            stdin_acked: 0,
            written: progress.written,
            attached: 0,
            end: progress.end.clone(),
            expired: false,
        };
        ExecStream {
            sandbox: rec.id.clone(),
            protocol: hangar_agent_protocol::VERSION,
            info,
            conn: None,
            source: Source::Files(hangar_journal::Reader::new(dir, from)),
            progress,
            kept_at: None,
            feeder: None,
            done: false,
        }
    }

    /// The main command's log of sandbox `rec`, which ended, from a copy of it (`data`, the log's last bytes;
    /// `end` says how many there were in all), from offsets `from`.
    /// `times` says when lines began (offset, Unix ms), as far as the copy knows.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn kept_copy(
        rec: &crate::SandboxInfo,
        data: bytes::Bytes,
        times: Vec<(u64, u64)>,
        end: ExecEnd,
        from: [u64; 2],
    ) -> Self {
        let mut stream = Self::kept_log(rec, std::path::PathBuf::new(), Progress::default(), from);
        stream.info.written = end.bytes;
        stream.info.end = Some(end.clone());
        // The copy's offsets count from where it starts within the whole log.
        let start = end.bytes[0].saturating_sub(data.len() as u64);
        let times = times.into_iter().map(|(at, ms)| (at + start, ms)).collect();
        stream.source = Source::Copy { data, times, end, pos: from[0] };
        stream
    }

    /// The exec as it was when this stream attached.
    pub fn info(&self) -> &ExecInfo {
        &self.info
    }

    /// This exec's id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Offsets (stdout, stderr) up to which output has been delivered.
    pub fn position(&self) -> [u64; 2] {
        match &self.source {
            Source::Files(reader) => reader.position(),
            Source::Inline(pos) => *pos,
            Source::Copy { pos, .. } => [*pos, 0],
        }
    }

    /// Signals and resizes for this exec, usable from another task.
    pub fn control(&self) -> ExecControl {
        ExecControl {
            sandbox: self.sandbox.clone(),
            exec: self.info.id.clone(),
            writer: self.conn.as_ref().map(|(_, w)| w.clone()),
            protocol: self.protocol,
        }
    }

    /// Moves the start to the last `lines` lines of each stream (see [`hangar_journal::Reader::seek_tail`]),
    /// as journaled now. Call before the first [`ExecStream::next`].
    pub async fn seek_tail(&mut self, lines: u64) -> Result<()> {
        match &mut self.source {
            Source::Inline(_) => return self.seek_inline(Request::SeekTail { lines }).await,
            Source::Copy { data, end, pos, .. } => {
                // (Never past the end the agent recorded, whatever the copy holds beyond it.)
                let start = end.bytes[0].saturating_sub(data.len() as u64);
                *pos = hangar_journal::tail_of(&data[..(end.bytes[0] - start) as usize], start, lines);
                return Ok(());
            }
            Source::Files(_) => {}
        }
        self.first_progress().await?;
        let Source::Files(reader) = &mut self.source else { unreachable!("inline returned above") };
        for i in 0..2 {
            reader
                .seek_tail(&self.progress, i, lines)
                .map_err(|e| Error::io("read journal of exec", &self.info.id, e))?;
        }
        self.control().send(&Request::Ack { pos: self.position() }).await
    }

    /// Moves stdout's start to the first bytes written at or after `ms` (Unix milliseconds; the main
    /// command's log keeps times, other execs start at their end), never into bytes the cap dropped, and
    /// never back. Call before the first [`ExecStream::next`].
    pub async fn seek_since(&mut self, ms: u64) -> Result<()> {
        match &mut self.source {
            Source::Inline(_) => return self.seek_inline(Request::SeekSince { ms }).await,
            Source::Copy { times, end, pos, .. } => {
                let at = hangar_journal::Times::from_records(times.clone()).since(ms).unwrap_or(end.bytes[0]);
                *pos = (*pos).max(at);
                return Ok(());
            }
            Source::Files(_) => {}
        }
        self.first_progress().await?;
        if let Source::Files(reader) = &mut self.source {
            reader.seek_since(&self.progress, ms);
        }
        self.control().send(&Request::Ack { pos: self.position() }).await
    }

    /// Has the agent seek (an inline journal): what it sent before its answer is dropped unread.
    async fn seek_inline(&mut self, req: Request) -> Result<()> {
        self.control().send(&req).await?;
        let (sandbox, exec) = (self.sandbox.clone(), self.info.id.clone());
        let gone =
            |detail: String| Error::SandboxGone { id: sandbox.clone(), detail: format!("exec {exec}: {detail}") };
        let Some((conn, _)) = self.conn.as_mut() else { return Ok(()) };
        loop {
            match conn.recv::<Response>().await {
                Ok(Some(Response::Seeked { pos })) => {
                    self.source = Source::Inline(pos);
                    return Ok(());
                }
                Ok(Some(Response::Output { len, .. })) => {
                    conn.recv_raw(len, |_| Ok(())).await.map_err(|e| gone(format!("journal: {e}")))?
                }
                Ok(Some(Response::Gap { .. } | Response::Ended(_) | Response::Progress(_))) => {}
                Ok(Some(Response::Error { kind, message })) => return Err(agent_error(&sandbox, &exec, kind, message)),
                other => return Err(gone(format!("no answer to a seek ({other:?})"))),
            }
        }
    }

    /// When the bytes of stdout were written, as far as the journal keeps times (the main command's log does;
    /// an inline journal's times stay with the agent, so none are known here).
    pub fn times(&self) -> hangar_journal::Times {
        match &self.source {
            Source::Files(reader) => hangar_journal::Times::new(reader.dir()),
            Source::Inline(_) => hangar_journal::Times::default(),
            Source::Copy { times, .. } => hangar_journal::Times::from_records(times.clone()),
        }
    }

    /// Waits for the agent's first snapshot, which follows the exec's info at once.
    async fn first_progress(&mut self) -> Result<()> {
        let Some((conn, _)) = self.conn.as_mut() else { return Ok(()) };
        if self.progress != Progress::default() {
            return Ok(());
        }
        match conn.recv::<Response>().await {
            Ok(Some(Response::Progress(p))) => {
                self.progress = p;
                Ok(())
            }
            other => Err(Error::SandboxGone {
                id: self.sandbox.clone(),
                detail: format!("exec {}: no journal progress ({other:?})", self.info.id),
            }),
        }
    }

    /// The agent is gone: the end the journal recorded (the main command's log keeps one), else the end of
    /// an exec whose sandbox went away, after what was journaled.
    fn writer_gone(&mut self) -> ExecEnd {
        use hangar_journal::Progress;
        if self.kept_at.is_some() {
            let dir = |s: &Self| match &s.source {
                Source::Files(reader) => Some(reader.dir().to_path_buf()),
                Source::Inline(_) | Source::Copy { .. } => None,
            };
            let kept = dir(self)
                .and_then(|d| Progress::load(&d))
                .or_else(|| self.moved_away().then(|| dir(self).and_then(|d| Progress::load(&d))).flatten());
            if let Some((p, end)) = kept.and_then(|p| p.end.clone().map(|end| (p, end))) {
                self.progress = p;
                return end;
            }
        }
        match &self.source {
            Source::Files(_) => ExecEnd::sandbox_gone(self.progress.written),
            // What was not sent yet went with the agent.
            Source::Inline(pos) => ExecEnd::sandbox_gone(*pos),
            Source::Copy { end, .. } => end.clone(),
        }
    }

    /// Whether the journal moved to where the log is kept (the reader then reads it there; an inline journal
    /// is read there from where it stopped).
    fn moved_away(&mut self) -> bool {
        let Some(kept) = self.kept_at.clone().filter(|k| k.is_dir()) else { return false };
        match &mut self.source {
            Source::Files(reader) if kept.as_path() != reader.dir() => reader.set_dir(kept),
            Source::Files(_) | Source::Copy { .. } => return false,
            Source::Inline(pos) => self.source = Source::Files(hangar_journal::Reader::new(kept, *pos)),
        }
        true
    }

    /// The next event; `Ok(None)` after [`ExecEvent::Exit`]. Output arrives as soon as the agent has
    /// journaled it; the exit comes only after every byte of both streams.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        Ok(self.next_to(Mode::Bytes).await?.map(|next| match next {
            Next::Event(ev) => ev,
            Next::Sent { .. } => unreachable!("nothing is sent without descriptors"),
        }))
    }

    /// As [`ExecStream::next`], but output goes to `to[stream]` (stdout's, stderr's descriptor) instead of
    /// being returned: straight from the journal's files by the kernel where this engine reads them
    /// (`sendfile`; into a pipe that moves page references, not bytes), else written. Returns what was sent,
    /// gaps and the end. Blocks while a descriptor does not take more (a full pipe slows the command, as a
    /// slow reader of events does).
    pub async fn next_sent(&mut self, to: [BorrowedFd<'_>; 2]) -> Result<Option<Next>> {
        self.next_to(Mode::Sent(to)).await
    }

    /// As [`ExecStream::next`], but output in the journal's files stays there: [`Next::Sent`] then names the
    /// bytes that come next, still unsent, and [`ExecStream::send_some`] moves them into a descriptor (all of
    /// them, before the next call); [`ExecStream::acknowledge`] then lets the journal drop them. Output that
    /// is not in files (an inline journal, a kept copy) comes as bytes.
    pub async fn next_unsent(&mut self) -> Result<Option<Next>> {
        self.next_to(Mode::Unsent).await
    }

    /// Moves up to `max` bytes of `stream`, of the range [`ExecStream::next_unsent`] named, into `to` by the
    /// kernel (see [`hangar_journal::Reader::send_some`]: `to` must be a pipe read as it fills), and returns
    /// how many. A full non-blocking `to` is `WouldBlock`.
    pub fn send_some(
        &mut self,
        stream: hangar_types::OutputStream,
        max: u64,
        to: BorrowedFd<'_>,
    ) -> std::io::Result<u64> {
        loop {
            let Source::Files(reader) = &mut self.source else {
                return Err(std::io::Error::other("this exec's output is not in files"));
            };
            match reader.send_some(stream, max, to) {
                // The sandbox ended and its log was moved to where it is kept, before this reader opened it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.moved_away() => continue,
                r => return r,
            }
        }
    }

    /// Tells the agent the output up to [`ExecStream::position`] is consumed: the journal may drop it, and the
    /// command may write more. An agent that is gone cannot take it; what that means, the next event says.
    pub async fn acknowledge(&self) {
        let _ = self.control().send(&Request::Ack { pos: self.position() }).await;
    }

    async fn next_to(&mut self, mode: Mode<'_>) -> Result<Option<Next>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let next = match &mut self.source {
                Source::Inline(_) => match self.next_inline().await? {
                    Some(ev) => Some(Next::Event(ev)),
                    // The agent went before the end: the log, where it is kept, or the end of a gone sandbox.
                    None if self.moved_away() => {
                        let dir = self.kept_at.clone().unwrap_or_default();
                        if let Some(p) = hangar_journal::Progress::load(&dir) {
                            self.progress = p;
                        }
                        continue;
                    }
                    None => Some(Next::Event(ExecEvent::Exit(self.writer_gone()))),
                },
                Source::Copy { data, end, pos, .. } => Some(Next::Event(next_of_copy(data, end, pos))),
                Source::Files(reader) => {
                    let next = match mode {
                        Mode::Sent(to) => reader.next_sent(&self.progress, to),
                        Mode::Bytes => reader.next(&self.progress).map(|ev| ev.map(Next::Event)),
                        Mode::Unsent => Ok(reader.next_range(&self.progress)),
                    };
                    match next {
                        // The sandbox ended and its log was moved to where it is kept, before this reader opened it.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.moved_away() => continue,
                        r => r.map_err(|e| Error::io("read journal of exec", &self.info.id, e))?,
                    }
                }
            };
            // Output that came as bytes goes to its descriptor here.
            let next = match (next, mode) {
                (Some(Next::Event(ExecEvent::Output { stream, offset, data })), Mode::Sent(to)) => {
                    hangar_journal::write_all(to[stream.index()], &data)
                        .map_err(|e| Error::io("write the output of exec", &self.info.id, e))?;
                    Some(Next::Sent { stream, offset, len: data.len() as u64 })
                }
                (next, _) => next,
            };
            match next {
                Some(Next::Event(ExecEvent::Exit(end))) => {
                    self.done = true;
                    return Ok(Some(Next::Event(ExecEvent::Exit(end))));
                }
                // Named, not sent yet: acknowledged once it is.
                Some(next @ Next::Sent { .. }) if matches!(mode, Mode::Unsent) => return Ok(Some(next)),
                Some(next) => {
                    // What we hand on is consumed: the journal may drop it and the command may write more (and
                    // an inline journal's agent may send more).
                    self.acknowledge().await;
                    return Ok(Some(next));
                }
                None => {}
            }
            let Some((conn, _)) = self.conn.as_mut() else {
                // A stored log holds its final progress: nothing more will come.
                self.done = true;
                return Err(Error::SandboxGone {
                    id: self.sandbox.clone(),
                    detail: format!("exec {}: the kept journal ended early", self.info.id),
                });
            };
            match conn.recv::<Response>().await {
                Ok(Some(Response::Progress(p))) => self.progress = p,
                Ok(Some(other)) => {
                    self.done = true;
                    return Err(Error::Agent {
                        id: self.sandbox.clone(),
                        message: format!("unexpected {other:?} on exec {}", self.info.id),
                    });
                }
                Ok(None) | Err(_) if self.progress.end.is_none() => {
                    // The agent is gone, and the sandbox with it: the exec ended with it. What it journaled is
                    // still delivered; the end's totals say how much that was.
                    let end = self.writer_gone();
                    self.progress.end = Some(end);
                }
                Ok(None) | Err(_) => {
                    self.done = true;
                    return Err(Error::SandboxGone {
                        id: self.sandbox.clone(),
                        detail: format!("exec {}: the journal ended early", self.info.id),
                    });
                }
            }
        }
    }

    /// The next event of an inline journal, as the agent sends it; `None` when the agent went before the end.
    async fn next_inline(&mut self) -> Result<Option<ExecEvent>> {
        let (sandbox, exec) = (&self.sandbox, &self.info.id);
        let (Some((conn, _)), Source::Inline(pos)) = (self.conn.as_mut(), &mut self.source) else {
            return Ok(None);
        };
        loop {
            match conn.recv::<Response>().await {
                Ok(Some(Response::Output { stream, offset, len })) => {
                    let mut data = bytes::BytesMut::with_capacity(len as usize);
                    let received = conn.recv_raw(len, |chunk| {
                        data.extend_from_slice(chunk);
                        Ok(())
                    });
                    if received.await.is_err() {
                        return Ok(None);
                    }
                    pos[stream.index()] = offset + len;
                    return Ok(Some(ExecEvent::Output { stream, offset, data: data.freeze() }));
                }
                Ok(Some(Response::Gap { stream, from, to })) => {
                    pos[stream.index()] = to;
                    return Ok(Some(ExecEvent::Gap { stream, from, to }));
                }
                Ok(Some(Response::Ended(end))) => return Ok(Some(ExecEvent::Exit(end))),
                // Not sent on inline attachments; harmless.
                Ok(Some(Response::Progress(_))) => {}
                Ok(Some(Response::Error { kind, message })) => {
                    self.done = true;
                    return Err(agent_error(sandbox, exec, kind, message));
                }
                Ok(Some(other)) => {
                    self.done = true;
                    let message = format!("unexpected {other:?} on exec {exec}");
                    return Err(Error::Agent { id: sandbox.clone(), message });
                }
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }
}

/// The next event of a kept copy of a log whose last `data.len()` bytes `data` holds, at offset `pos`.
fn next_of_copy(data: &bytes::Bytes, end: &ExecEnd, pos: &mut u64) -> ExecEvent {
    let total = end.bytes[0];
    let start = total.saturating_sub(data.len() as u64);
    let stream = hangar_types::OutputStream::Stdout;
    if *pos < start {
        let from = std::mem::replace(pos, start);
        return ExecEvent::Gap { stream, from, to: start };
    }
    if *pos >= total {
        return ExecEvent::Exit(end.clone());
    }
    // (Never past the end the agent recorded, whatever the copy holds beyond it.)
    let (at, stop) = ((*pos - start) as usize, (total - start) as usize);
    let chunk = data.slice(at..(at + hangar_journal::CHUNK).min(data.len()).min(stop));
    let offset = std::mem::replace(pos, *pos + chunk.len() as u64);
    ExecEvent::Output { stream, offset, data: chunk }
}
