//! A sandbox's log: its main command's stdout and stderr (one pipe, so in the order they were written),
//! journaled like an exec's output ([`hangar_types::MAIN_EXEC`]), followed live or read as it stands, from a
//! byte offset or from its last lines, while the sandbox runs and after it ended.

use crate::{ExecEnd, ExecEvent, ExecHandle, Result, Sandbox};
use std::time::Duration;

/// What to read of a sandbox's log; from [`Sandbox::logs`]. Configure it, then [`Logs::start`] it for
/// events or [`Logs::collect`] it for the bytes.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// // What the main command wrote so far, as `docker logs` would show it.
/// let log = sb.logs().collect().await?;
/// print!("{}", log.text());
/// // The last 20 lines, then everything it writes until it ends, as `tail -n 20 -f` would.
/// let mut s = sb.logs().tail_lines(20).follow(true).start().await?;
/// while let Some(ev) = s.next_event().await? {
///     if let hangar::ExecEvent::Output { data, .. } = ev {
///         print!("{}", String::from_utf8_lossy(&data));
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Logs<'a> {
    sb: &'a Sandbox,
    follow: bool,
    start: crate::client::Start,
    keepalive: Option<Duration>,
}

impl<'a> Logs<'a> {
    pub(crate) fn new(sb: &'a Sandbox) -> Self {
        Self { sb, follow: false, start: Default::default(), keepalive: None }
    }

    /// Keep following the log as the main command writes, until it ends (default: stop at what was there
    /// when the log was opened).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let all = sb.logs().follow(true).collect().await?;
    /// println!("the main command ended: {:?}", all.end.map(|e| e.ending));
    /// # Ok(()) }
    /// ```
    pub fn follow(mut self, on: bool) -> Self {
        self.follow = on;
        self
    }

    /// Start at byte `offset` of the log (a [`SandboxLog::next_offset`] or [`LogStream::position`] from an
    /// earlier read): exactly the bytes after it arrive.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let first = sb.logs().collect().await?;
    /// let more = sb.logs().from_offset(first.next_offset).collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_offset(mut self, offset: u64) -> Self {
        self.start.from[0] = offset;
        self
    }

    /// Start at the last `n` lines (a last line without its newline counts) instead of an offset.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let last = sb.logs().tail_lines(1).collect().await?;
    /// println!("last line: {}", last.text().trim_end());
    /// # Ok(()) }
    /// ```
    pub fn tail_lines(mut self, n: u64) -> Self {
        self.start.tail_lines = Some(n);
        self
    }

    /// Start at the first bytes written at or after `time` (the log keeps when its bytes came, to 10 ms);
    /// with [`Logs::tail_lines`], whichever starts later.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let ten_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    /// let recent = sb.logs().since(ten_minutes_ago).collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn since(mut self, time: std::time::SystemTime) -> Self {
        let ms = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.start.since_ms = Some(ms);
        self
    }

    /// Against a server: how often it sends a keepalive while the log is quiet (a followed log of a quiet
    /// command stays open through proxies that close idle streams).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let s = sb.logs().follow(true).keepalive(std::time::Duration::from_secs(5)).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn keepalive(mut self, every: Duration) -> Self {
        self.keepalive = Some(every);
        self
    }

    /// Opens the log for events.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut s = sb.logs().follow(true).start().await?;
    /// while let Some(ev) = s.next_event().await? {
    ///     println!("{ev:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn start(self) -> Result<LogStream> {
        let main = hangar_types::MAIN_EXEC;
        let h = self.sb.client.attach(&self.sb.id, main, self.start, self.keepalive).await?;
        let (written, ended) = h.journaled;
        let until = (!self.follow && !ended).then_some(written[0]);
        Ok(LogStream { handle: h, until })
    }

    /// Reads the log (up to what was there, or when following until the main command ended) into memory.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let log = sb.logs().collect().await?;
    /// assert!(log.gaps.is_empty(), "the journal cap dropped part of it");
    /// # Ok(()) }
    /// ```
    pub async fn collect(self) -> Result<SandboxLog> {
        let mut s = self.start().await?;
        let mut log = SandboxLog { next_offset: s.position(), ..Default::default() };
        while let Some(ev) = s.next_event().await? {
            match ev {
                ExecEvent::Output { data, .. } => log.data.extend_from_slice(&data),
                ExecEvent::Gap { from, to, .. } => log.gaps.push((from, to)),
                ExecEvent::Exit(end) => log.end = Some(end),
            }
        }
        log.next_offset = s.position();
        Ok(log)
    }
}

/// A sandbox's log as read by [`Logs::collect`].
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// let log = sb.logs().collect().await?;
/// println!("{} bytes, next read from {}", log.data.len(), log.next_offset);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxLog {
    /// The bytes read, in order.
    pub data: Vec<u8>,
    /// Byte ranges `[from, to)` that were not there to read: dropped by the log's cap (its first 8 MiB and its
    /// newest bytes are kept) while nobody read them.
    pub gaps: Vec<(u64, u64)>,
    /// How the main command ended, when it had (and the read got that far).
    pub end: Option<ExecEnd>,
    /// The offset to read on from ([`Logs::from_offset`]).
    pub next_offset: u64,
}

impl SandboxLog {
    /// The bytes as text (invalid UTF-8 replaced).
    ///
    /// ```
    /// let log = hangar::SandboxLog { data: b"ready\n".to_vec(), ..Default::default() };
    /// assert_eq!(log.text(), "ready\n");
    /// ```
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// A sandbox's log as events, from [`Logs::start`]: output (all of it on [`crate::OutputStream::Stdout`]),
/// gaps, and the main command's end once it ended. Checked like an exec's events ([`ExecHandle`]). Against a
/// server it resumes by itself when the connection breaks.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// let mut s = sb.logs().start().await?;
/// while let Some(ev) = s.next_event().await? {}
/// println!("read up to byte {}", s.position());
/// # Ok(()) }
/// ```
pub struct LogStream {
    handle: ExecHandle,
    /// Not following: the position at which what was there is read.
    until: Option<u64>,
}

impl LogStream {
    /// The next event; `Ok(None)` after the end (the main command's, or of what was there when not
    /// following).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let mut s = sb.logs().follow(true).start().await?;
    /// if let Some(hangar::ExecEvent::Output { offset, data, .. }) = s.next_event().await? {
    ///     println!("{} bytes at {offset}", data.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>> {
        if self.until.is_some_and(|u| self.handle.position()[0] >= u) {
            return Ok(None);
        }
        self.handle.next_event().await
    }

    /// The offset up to which the log has been delivered.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
    /// let s = sb.logs().tail_lines(5).start().await?;
    /// println!("the last 5 lines start at byte {}", s.position());
    /// # Ok(()) }
    /// ```
    pub fn position(&self) -> u64 {
        self.handle.position()[0]
    }
}
