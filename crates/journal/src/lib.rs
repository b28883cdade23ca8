//! An exec's output journal: what the agent writes as the command prints, and what readers replay and follow
//! from any offset. Writer and reader live together here because they share one set of rules: the file
//! layout, the cap with its kept head and dropped middle, the ranges lost to a full disk, and how all of that
//! turns into output and explicit gaps for a reader.
//!
//! Layout: `execs/<exec id>/{stdout,stderr}` under the sandbox's host-side state directory ([`dir`]); byte
//! `n` of a stream is at file offset `n`, or, past the head of a streamed journal, at its place in a ring the
//! size of the rest of the cap ([`Progress::ring`]), so a reader resumes at any offset with one `pread`.
//! Beyond the cap per stream ([`Writer::create`]), while no attached reader still needs them, the oldest
//! bytes after a kept head are dropped (hole-punched out, or left to be written over in a ring) and
//! reported as a gap; while a reader still needs them nothing is dropped and
//! the writer waits ([`Writer::is_full`]), so a slow reader slows the command instead of losing output.
//! An exec's journal is [`Writer::streamed`] ([`STREAMED`]): while a reader is attached it runs at most a lead
//! ahead of it, and of what readers acknowledged it keeps only the last stretch (and the head). It holds what
//! is unread, not a second copy of everything delivered, so streaming cycles through the ring's page cache,
//! written over in place like a pipe's buffer, instead of filling the host's memory and disk at
//! page-allocation speed.
//!
//! The writer is the agent's, the reader the engine's: they share no memory, only the files and the
//! [`Progress`] snapshots the agent sends.

use hangar_types::{ExecEnd, ExecEvent, Next, OutputStream};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The journal's file names, per stream (`[stdout, stderr]`).
pub const FILES: [&str; 2] = ["stdout", "stderr"];
/// Most bytes one [`Writer::append`] takes, and one [`Reader::next`] hands out.
pub const CHUNK: usize = 1 << 20;
/// Smallest cap per stream a journal accepts (smaller caps are raised to it).
pub const MIN_CAP: u64 = 64 << 10;
/// Most of a stream's start that is kept whatever the cap drops (a quarter of the cap, at most this).
pub const MAX_HEAD: u64 = 8 << 20;

/// How a [`Writer::streamed`] journal keeps pace with its readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// How far the stream runs ahead of its slowest attached reader.
    pub lead: u64,
    /// Acknowledged bytes kept behind the furthest acknowledgement (besides the head).
    pub keep: u64,
}

/// An exec's: a 16 MiB lead, and 64 MiB of acknowledged output kept. A reader acknowledges what it handed
/// on; a server hands output on to a client that may lose its connection with up to ~26 MiB in flight (its
/// stream buffer of 16 × 1 MiB and an 8 MiB HTTP/2 window) and resume from what it got: that must still be
/// there. The rest of what is kept is recent context for a reader that attaches later.
pub const STREAMED: Streamed = Streamed { lead: 16 << 20, keep: 64 << 20 };
/// Delivered output is punched out in steps of at least this (a page-aligned hole frees whole pages).
const DROP_STEP: u64 = 1 << 20;
/// The largest ring ([`Writer::streamed`]) whose dropped bytes stay in place, to be written over: that of
/// the default cap. A larger one punches them out, so that its page cache stays the few dozen MiB that
/// streaming needs.
const MAX_HOT_RING: u64 = hangar_types::DEFAULT_JOURNAL_CAP - MAX_HEAD;

/// The file in a journal's directory holding its final [`Progress`] (written by [`persist`] when the exec
/// ended), so a journal can be read after its writer is gone.
pub const PROGRESS_FILE: &str = "progress.json";

/// The directory of exec `exec`'s journal, relative to the sandbox's state directory.
///
/// ```
/// assert_eq!(hangar_journal::dir("ex-1"), "execs/ex-1");
/// ```
pub fn dir(exec: &str) -> String {
    format!("execs/{exec}")
}

/// An empty journal made ahead of time, under a name no exec can have, for the next exec to take
/// ([`Writer::make_files`]) so that making its files is off that exec's path (a directory and two files made
/// on ext4 cost ~0.2 ms; a rename a tenth of that).
#[derive(Debug)]
pub struct Spare {
    rel: String,
    files: [File; 2],
}

impl Spare {
    /// Makes the spare journal under `state_dir` (replacing one left there before).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("journal-spare-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// use std::os::fd::AsFd;
    /// let state = std::fs::File::open(&dir).unwrap();
    /// let spare = hangar_journal::Spare::make(state.as_fd()).unwrap();
    /// let mut w = hangar_journal::Writer::lazy("ex-1", 1 << 20);
    /// w.make_files(state.as_fd(), Some(spare)).unwrap();
    /// assert_eq!(w.written(), [0, 0]);
    /// assert!(dir.join("execs/ex-1/stdout").exists() && !dir.join("execs/.spare").exists());
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn make(state_dir: BorrowedFd<'_>) -> io::Result<Self> {
        let rel = dir(SPARE_NAME);
        Ok(Self { files: make_files(state_dir, &rel)?, rel })
    }
}

/// The spare journal's directory name (exec ids never start with a dot).
const SPARE_NAME: &str = ".spare";

/// Makes directory `rel` (under `execs`) of `state_dir` with both streams' files, empty, open for writing.
fn make_files(state_dir: BorrowedFd<'_>, rel: &str) -> io::Result<[File; 2]> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    for d in ["execs", rel] {
        match mkdirat(state_dir, d, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let open = |name: &str| -> io::Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC;
        let path = format!("{rel}/{name}");
        Ok(File::from(openat(state_dir, path.as_str(), flags, Mode::from_bits_truncate(0o600))?))
    };
    Ok([open(FILES[0])?, open(FILES[1])?])
}

/// A journal's state, as the writer publishes it to readers whenever it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes written so far (stdout, stderr): everything below is in the journal files, except dropped bytes.
    pub written: [u64; 2],
    /// Retained head of each stream: bytes below this are never dropped.
    pub head: u64,
    /// Bytes `head..dropped_to` of each stream were dropped to respect the journal cap, or after they were
    /// delivered ([`Writer::streamed`]).
    pub dropped_to: [u64; 2],
    /// Ranges `from..to` of each stream that could not be journaled at all (the host's disk stayed full past
    /// the command's end): readers get them as gaps, never as bytes.
    #[serde(default)]
    pub lost: [Vec<(u64, u64)>; 2],
    /// Set once the exec ended and every byte is journaled.
    pub end: Option<ExecEnd>,
    /// Stream bytes from `head` on are kept in a ring of this many bytes after the head: byte `n` at file
    /// offset `head + (n - head) % ring`; 0: not in a ring (byte `n` at file offset `n`).
    #[serde(default)]
    pub ring: u64,
}

/// Where a stream's bytes are in its file: the head at its own offsets, then a ring of `ring` bytes that the
/// bytes after the head go round (0: no ring).
#[derive(Debug, Clone, Copy)]
struct Layout {
    head: u64,
    ring: u64,
}

impl Layout {
    /// The file offset of stream byte `n`.
    fn at(self, n: u64) -> u64 {
        if self.ring == 0 || n < self.head {
            n
        } else {
            self.head + (n - self.head) % self.ring
        }
    }

    /// How many bytes from stream byte `n` on lie in one stretch of the file, at most `len`.
    fn run(self, n: u64, len: u64) -> u64 {
        if self.ring == 0 {
            len
        } else if n < self.head {
            len.min(self.head - n)
        } else {
            len.min(self.ring - (n - self.head) % self.ring)
        }
    }
}

struct Stream {
    /// Open while the exec runs; `None` once it ended (readers open the files by path: an agent holding two
    /// descriptors per retained exec would run out of them).
    file: Option<File>,
    written: u64,
    dropped_to: u64,
    lost: Vec<(u64, u64)>,
    crc: crc32fast::Hasher,
    /// Where [`Writer::append_from`] reads back what the kernel moved in, for the CRC.
    view: Option<View>,
}

/// An attached reader, for [`Writer::ack`] and [`Writer::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReaderId(u64);

/// The writing side of one exec's journal (both streams).
pub struct Writer {
    streams: [Stream; 2],
    head: u64,
    cap: u64,
    /// Attached readers' positions: bytes at or after them are never dropped.
    pins: HashMap<ReaderId, [u64; 2]>,
    next_reader: u64,
    /// The furthest any reader has acknowledged (stdout, stderr).
    delivered: [u64; 2],
    /// How it is [`Writer::streamed`]; `None`: not streamed.
    streamed: Option<Streamed>,
    /// A [`Writer::lazy`] journal's directory (relative to the state directory) until its files are made.
    unmade: Option<String>,
    /// The ring the bytes after the head go round ([`Layout`]); 0: none.
    ring: u64,
}

impl Writer {
    /// Creates exec `exec`'s journal files under `state_dir` (a descriptor of the sandbox's state
    /// directory), empty, keeping up to `cap` bytes per stream.
    pub fn create(state_dir: BorrowedFd<'_>, exec: &str, cap: u64) -> io::Result<Self> {
        let mut w = Self::lazy(exec, cap);
        w.make_files(state_dir, None)?;
        Ok(w)
    }

    /// As [`Writer::create`], but the files are made only with the first byte ([`Writer::make_files`]): an
    /// exec that prints nothing costs the host's filesystem nothing (a new inode cost ~0.1 ms on a
    /// journal-less ext4 that had deleted many lately). Readers read nothing of a journal with nothing written,
    /// so nobody misses the files until then.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("journal-lazy-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// use std::os::fd::AsFd;
    /// let state = std::fs::File::open(&dir).unwrap();
    /// let mut w = hangar_journal::Writer::lazy("ex-1", 1 << 20);
    /// assert!(w.unmade() && !dir.join("execs/ex-1").exists());
    /// w.make_files(state.as_fd(), None).unwrap();
    /// w.append(0, b"hi\n", false).unwrap();
    /// assert_eq!(std::fs::read(dir.join("execs/ex-1/stdout")).unwrap(), b"hi\n");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn lazy(exec: &str, cap: u64) -> Self {
        Self { unmade: Some(dir(exec)), ..Self::with_streams([None, None], cap) }
    }

    /// Whether a [`Writer::lazy`] journal's files are still to be made (before its first [`Writer::append`]).
    pub fn unmade(&self) -> bool {
        self.unmade.is_some()
    }

    /// Makes a [`Writer::lazy`] journal's files under `state_dir`: `spare`'s renamed, when given, else new ones
    /// (also when the rename fails; the spare is then removed). A no-op once they are made.
    pub fn make_files(&mut self, state_dir: BorrowedFd<'_>, spare: Option<Spare>) -> io::Result<()> {
        let Some(rel) = self.unmade.as_deref() else { return Ok(()) };
        let files = match spare {
            Some(spare) => match nix::fcntl::renameat(state_dir, spare.rel.as_str(), state_dir, rel) {
                Ok(()) => spare.files,
                Err(_) => {
                    Self::remove_dir(state_dir, &spare.rel);
                    make_files(state_dir, rel)?
                }
            },
            None => make_files(state_dir, rel)?,
        };
        for (s, f) in self.streams.iter_mut().zip(files) {
            s.file = Some(f);
        }
        self.unmade = None;
        Ok(())
    }

    fn with_streams(files: [Option<File>; 2], cap: u64) -> Self {
        let cap = cap.max(MIN_CAP);
        let head = head_of(cap);
        let stream =
            |file| Stream { file, written: 0, dropped_to: head, lost: vec![], crc: Default::default(), view: None };
        let [out, err] = files;
        Self {
            streams: [stream(out), stream(err)],
            head,
            cap,
            pins: HashMap::new(),
            next_reader: 0,
            delivered: [0; 2],
            streamed: None,
            unmade: None,
            ring: 0,
        }
    }

    /// Makes this a journal streamed to its readers (an exec's: [`STREAMED`]): while a reader is attached,
    /// the stream is [full](Writer::is_full) `s.lead` bytes ahead of the slowest one; of what some reader has
    /// acknowledged only the last `s.keep` bytes are kept (besides the head), the rest is dropped like bytes
    /// the cap drops, and a reader that asks for it later gets a gap. Without this (a sandbox's log) a journal
    /// keeps everything up to its cap and only the cap holds its writer back.
    ///
    /// Its bytes after the head then go round a ring of the rest of the cap ([`Progress::ring`]), when that
    /// is at least `s.lead + s.keep + `[`CHUNK`]: the file never outgrows the cap, and its pages are written
    /// over in place instead of punched out and allocated again (a third of the cost of journaling a byte).
    /// Readers copy out of it ([`Reader::next_sent`]): a page is written over only after its slowest attached
    /// reader acknowledged `s.keep` more bytes past it, but a pipe may still hold references to it after its
    /// reader left.
    pub fn streamed(mut self, s: Streamed) -> Self {
        self.streamed = Some(s);
        let ring = self.cap - self.head;
        if ring >= s.lead + s.keep + CHUNK as u64 {
            self.ring = ring;
        }
        self
    }

    fn layout(&self) -> Layout {
        Layout { head: self.head, ring: self.ring }
    }

    /// Deletes exec `exec`'s journal files under `state_dir`.
    pub fn remove(state_dir: BorrowedFd<'_>, exec: &str) {
        Self::remove_dir(state_dir, &dir(exec));
    }

    fn remove_dir(state_dir: BorrowedFd<'_>, rel: &str) {
        use nix::unistd::{unlinkat, UnlinkatFlags};
        for name in FILES {
            let _ = unlinkat(state_dir, format!("{rel}/{name}").as_str(), UnlinkatFlags::NoRemoveDir);
        }
        let _ = unlinkat(state_dir, rel, UnlinkatFlags::RemoveDir);
    }

    fn retained(&self, i: usize) -> u64 {
        let s = &self.streams[i];
        s.written - (s.dropped_to - self.head)
    }

    /// Bytes the journal holds now, both streams (what was written less what was dropped).
    pub fn retained_bytes(&self) -> u64 {
        self.retained(0) + self.retained(1)
    }

    /// The most one append may add to a stream: the room the cap must leave for it.
    pub fn room(&self) -> usize {
        (self.cap / 4).min(CHUNK as u64) as usize
    }

    /// Drops what the cap asks for so that one more append fits, and delivered bytes beyond what
    /// [`Writer::streamed`] keeps, as far as no attached reader still needs them. Whether it dropped
    /// anything (the caller then publishes the new [`Writer::progress`]).
    pub fn make_room(&mut self, i: usize) -> bool {
        let room = self.room() as u64;
        let s = &self.streams[i];
        let mut to = s.dropped_to;
        if self.retained(i) + room > self.cap {
            to = s.written - (self.cap - self.head - room);
        }
        if let Some(streamed) = self.streamed {
            let delivered = self.delivered[i].saturating_sub(streamed.keep);
            if delivered >= s.dropped_to + DROP_STEP {
                to = to.max(delivered);
            }
        }
        let to = to.min(self.slowest(i).unwrap_or(u64::MAX));
        let layout = self.layout();
        let s = &mut self.streams[i];
        if to <= s.dropped_to {
            return false;
        }
        // A small ring keeps its pages to write over; a large one gives back what it dropped.
        if let Some(f) = s.file.as_ref().filter(|_| self.ring == 0 || self.ring > MAX_HOT_RING) {
            use nix::fcntl::{fallocate, FallocateFlags};
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            // (Of a range longer than the ring only its last lap: the earlier bytes' places hold kept ones.)
            let mut from = s.dropped_to;
            if self.ring > 0 {
                from = from.max(s.written.saturating_sub(self.ring));
            }
            while from < to {
                let n = layout.run(from, to - from);
                let _ = fallocate(f, flags, layout.at(from) as i64, n as i64);
                from += n;
            }
        }
        s.dropped_to = to;
        true
    }

    /// Whether stream `i` has no room for another append until an attached reader moves on (after
    /// [`Writer::make_room`] did what it could): it reached its cap, or a streamed journal its window ahead
    /// of the slowest reader.
    pub fn is_full(&self, i: usize) -> bool {
        let next = self.streams[i].written + self.room() as u64;
        let ahead = |s: Streamed| self.slowest(i).is_some_and(|pos| next > pos.saturating_add(s.lead));
        self.retained(i) + self.room() as u64 > self.cap || self.streamed.is_some_and(ahead)
    }

    /// Where the slowest attached reader of stream `i` is.
    fn slowest(&self, i: usize) -> Option<u64> {
        self.pins.values().map(|p| p[i]).min()
    }

    /// Journals `data` (at most [`Writer::room`] bytes) at the end of stream `i`. On a write error (the
    /// host's disk is full) nothing is counted and the caller keeps the bytes, unless `lose` says to count
    /// them anyway as a lost range (readers get a gap for it).
    /// A [`Writer::lazy`] journal whose files are not made fails like a full disk.
    pub fn append(&mut self, i: usize, data: &[u8], lose: bool) -> io::Result<()> {
        let unmade = self.unmade.is_some();
        let layout = self.layout();
        let s = &mut self.streams[i];
        let written = match &s.file {
            _ if unmade => Err(io::Error::other("the journal's files are not made yet")),
            Some(f) => {
                let (at, n) = (s.written, data.len() as u64);
                let first = layout.run(at, n) as usize;
                f.write_all_at(&data[..first], layout.at(at))
                    .and_then(|()| f.write_all_at(&data[first..], layout.at(at + first as u64)))
            }
            None => Ok(()),
        };
        if let Err(e) = written {
            if !lose {
                return Err(e);
            }
            let end = s.written + data.len() as u64;
            match s.lost.last_mut() {
                Some(last) if last.1 == s.written => last.1 = end,
                _ => s.lost.push((s.written, end)),
            }
        }
        s.crc.update(data);
        s.written += data.len() as u64;
        self.make_room(i);
        Ok(())
    }

    /// Journals what pipe `src` holds, at most `max` bytes (and [`Writer::room`]), at the end of stream `i`,
    /// moved by the kernel (`splice`): the bytes never pass through this process's memory on the way in,
    /// only read back from the page cache for the CRC. How many bytes it took; 0: the pipe's writers are
    /// gone and it is empty. A pipe with nothing to read fails with [`io::ErrorKind::WouldBlock`] (`src` is
    /// non-blocking); a failed write (the host's disk is full) takes nothing from the pipe, and neither
    /// does a `src` that is no pipe. Either way the caller reads the bytes itself and [`Writer::append`]s
    /// them, which says what to do when they cannot be journaled.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("journal-append-from-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// use std::os::fd::AsFd;
    /// let state = std::fs::File::open(&dir).unwrap();
    /// let mut w = hangar_journal::Writer::create(state.as_fd(), "ex-1", 1 << 20).unwrap();
    /// let (r, wr) = nix::unistd::pipe().unwrap();
    /// nix::unistd::write(&wr, b"hi\n").unwrap();
    /// drop(wr);
    /// assert_eq!(w.append_from(0, r.as_fd(), 1 << 20).unwrap(), 3);
    /// assert_eq!(w.append_from(0, r.as_fd(), 1 << 20).unwrap(), 0, "the pipe's end");
    /// assert_eq!(std::fs::read(dir.join("execs/ex-1/stdout")).unwrap(), b"hi\n");
    /// assert_eq!(w.crc32()[0], crc32fast::hash(b"hi\n"));
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn append_from(&mut self, i: usize, src: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        use nix::fcntl::{splice, SpliceFFlags};
        let layout = self.layout();
        let max = (layout.run(self.streams[i].written, max.min(self.room()) as u64)) as usize;
        let s = &mut self.streams[i];
        let file = match &s.file {
            Some(f) if self.unmade.is_none() => f,
            _ => return Err(io::Error::other("the journal's files are not open")),
        };
        let at = layout.at(s.written);
        let mut off = at as libc::loff_t;
        let n = splice(src, None, file, Some(&mut off), max, SpliceFFlags::SPLICE_F_NONBLOCK)?;
        View::update_crc(&mut s.view, file, at, n, &mut s.crc)?;
        s.written += n as u64;
        self.make_room(i);
        Ok(n)
    }

    /// Bytes written so far (stdout, stderr).
    pub fn written(&self) -> [u64; 2] {
        [self.streams[0].written, self.streams[1].written]
    }

    /// CRC-32 (IEEE) of everything written so far (stdout, stderr).
    pub fn crc32(&self) -> [u32; 2] {
        [self.streams[0].crc.clone().finalize(), self.streams[1].crc.clone().finalize()]
    }

    /// The journal's state for readers, with the exec's end once it ended.
    pub fn progress(&self, end: Option<ExecEnd>) -> Progress {
        Progress {
            written: self.written(),
            head: self.head,
            dropped_to: [self.streams[0].dropped_to, self.streams[1].dropped_to],
            lost: [self.streams[0].lost.clone(), self.streams[1].lost.clone()],
            end,
            ring: self.ring,
        }
    }

    /// The exec ended: closes the files (readers open them by path).
    pub fn close(&mut self) {
        for s in &mut self.streams {
            s.file = None;
            s.view = None;
        }
    }

    /// Registers a reader starting at `from`: nothing at or after its position is dropped until it acks.
    pub fn attach(&mut self, from: [u64; 2]) -> ReaderId {
        let id = ReaderId(self.next_reader);
        self.next_reader += 1;
        self.pins.insert(id, from);
        id
    }

    /// Reader `id` has consumed everything before `pos`.
    pub fn ack(&mut self, id: ReaderId, pos: [u64; 2]) {
        if let Some(p) = self.pins.get_mut(&id) {
            *p = [p[0].max(pos[0]), p[1].max(pos[1])];
            // (Never past what was written: an ack only says what its reader has.)
            for ((d, at), s) in self.delivered.iter_mut().zip(*p).zip(&self.streams) {
                *d = (*d).max(at.min(s.written));
            }
        }
    }

    /// Whether reader `id` has acknowledged everything written so far (both streams).
    pub fn has_all(&self, id: ReaderId) -> bool {
        self.pins.get(&id).is_some_and(|p| p.iter().zip(self.written()).all(|(&at, written)| at >= written))
    }

    /// Reader `id` left.
    pub fn detach(&mut self, id: ReaderId) {
        self.pins.remove(&id);
    }

    /// Readers attached now.
    pub fn readers(&self) -> usize {
        self.pins.len()
    }
}

/// Where the last `lines` lines of the stream bytes `floor..end` start (a last line without its newline
/// counts; never before `floor`; `u64::MAX` lines: `floor`), reading them backwards in blocks with `read_at(at,
/// len)`.
fn tail_start(
    floor: u64,
    end: u64,
    lines: u64,
    mut read_at: impl FnMut(u64, u64) -> io::Result<Vec<u8>>,
) -> io::Result<u64> {
    const BLOCK: u64 = 64 << 10;
    if lines == 0 {
        return Ok(end);
    }
    let (mut at, mut found) = (if lines == u64::MAX { floor } else { end }, 0u64);
    while at > floor {
        let n = (at - floor).min(BLOCK);
        at -= n;
        let block = read_at(at, n)?;
        for (k, b) in block.iter().enumerate().rev() {
            let pos = at + k as u64;
            // The newline that ends the last line does not start one.
            if *b == b'\n' && pos + 1 != end {
                found += 1;
                if found == lines {
                    return Ok(pos + 1);
                }
            }
        }
    }
    Ok(floor)
}

/// Where the last `lines` lines of a stream held in memory start (the rule of [`Reader::seek_tail`]): `data`
/// is the stream's bytes from offset `base` to its end.
///
/// ```
/// assert_eq!(hangar_journal::tail_of(b"a\nb\nc\n", 10, 2), 12);
/// assert_eq!(hangar_journal::tail_of(b"a\nb\npartial", 10, 1), 14);
/// assert_eq!(hangar_journal::tail_of(b"a\nb\n", 10, 9), 10);
/// ```
pub fn tail_of(data: &[u8], base: u64, lines: u64) -> u64 {
    let end = base + data.len() as u64;
    let slice = |at: u64, n: u64| Ok(data[(at - base) as usize..(at - base + n) as usize].to_vec());
    tail_start(base, end, lines, slice).unwrap_or(base)
}

/// The kept head of a journal with cap `cap` (already raised to [`MIN_CAP`]).
fn head_of(cap: u64) -> u64 {
    (cap / 4).min(MAX_HEAD)
}

/// Writes `p` as exec `exec`'s final progress ([`PROGRESS_FILE`]) under `state_dir`, atomically.
pub fn persist(state_dir: BorrowedFd<'_>, exec: &str, p: &Progress) -> io::Result<()> {
    use nix::fcntl::{openat, renameat, OFlag};
    let rel = dir(exec);
    let (tmp, to) = (format!("{rel}/{PROGRESS_FILE}.tmp"), format!("{rel}/{PROGRESS_FILE}"));
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC;
    let f = File::from(openat(state_dir, tmp.as_str(), flags, nix::sys::stat::Mode::from_bits_truncate(0o600))?);
    f.write_all_at(&serde_json::to_vec(p).map_err(io::Error::other)?, 0)?;
    renameat(state_dir, tmp.as_str(), state_dir, to.as_str())?;
    Ok(())
}

impl Progress {
    /// Where the stream bytes this progress describes are in the files.
    fn layout(&self) -> Layout {
        Layout { head: self.head, ring: self.ring }
    }

    /// The final progress [`persist`]ed in journal directory `dir`, if there is one.
    pub fn load(dir: &std::path::Path) -> Option<Progress> {
        serde_json::from_slice(&std::fs::read(dir.join(PROGRESS_FILE)).ok()?).ok()
    }

    /// What can be known of a journal in `dir` (cap `cap`) whose writer died without [`persist`]ing: its
    /// lengths, and the range the cap dropped (found as the hole punched after the head, to a filesystem
    /// block). No end: the caller decides what the exec's end was.
    pub fn recover(dir: &std::path::Path, cap: u64) -> io::Result<Progress> {
        use std::os::fd::AsFd;
        let head = head_of(cap.max(MIN_CAP));
        let mut p = Progress { head, dropped_to: [head; 2], ..Default::default() };
        for (i, name) in FILES.iter().enumerate() {
            let f = match File::open(dir.join(name)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let len = f.metadata()?.len();
            p.written[i] = len;
            if len > head {
                let data = nix::unistd::lseek(f.as_fd(), head as i64, nix::unistd::Whence::SeekData);
                p.dropped_to[i] = match data {
                    Ok(at) => (at as u64).clamp(head, len),
                    Err(nix::errno::Errno::ENXIO) => len,
                    Err(_) => head,
                };
            }
        }
        Ok(p)
    }
}

/// The reading side: follows one exec's journal files from given offsets, turning [`Progress`] snapshots
/// into output (read straight from the files) and explicit gaps, both streams alternating so neither starves.
pub struct Reader {
    dir: PathBuf,
    /// Where the bytes are in the files, as the last [`Progress`] said.
    layout: Layout,
    files: [Option<File>; 2],
    pos: [u64; 2],
    next_stream: usize,
}

impl Reader {
    /// A reader of the journal in directory `dir` (the sandbox's state directory joined with [`dir`]),
    /// starting at offsets `from` (stdout, stderr).
    pub fn new(dir: PathBuf, from: [u64; 2]) -> Self {
        Self { dir, files: [None, None], pos: from, next_stream: 0, layout: Layout { head: 0, ring: 0 } }
    }

    /// Offsets (stdout, stderr) up to which events have been handed out.
    pub fn position(&self) -> [u64; 2] {
        self.pos
    }

    /// The directory read.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Moves the position to `pos` (stdout, stderr), e.g. where a time index says a time starts.
    pub fn seek(&mut self, pos: [u64; 2]) {
        self.pos = pos;
    }

    /// Reads the journal from directory `dir` from now on (it was moved; files already open stay open).
    pub fn set_dir(&mut self, dir: PathBuf) {
        self.dir = dir;
    }

    /// Moves stdout's position to the first bytes written at or after `ms` (Unix milliseconds), as the
    /// journal's time index knows them (the main command's log keeps one; other journals go to their end),
    /// never into bytes the cap dropped, and never back.
    pub fn seek_since(&mut self, p: &Progress, ms: u64) {
        let mut at = Times::new(&self.dir).since(ms).unwrap_or(p.written[0]);
        if at >= p.head && at < p.dropped_to[0] {
            at = p.dropped_to[0];
        }
        self.pos[0] = self.pos[0].max(at);
    }

    /// Moves stream `i`'s position to the start of its last `lines` lines, as `p` knows them (a last line
    /// without its newline counts). Never into bytes the cap dropped: with fewer lines after a dropped range,
    /// it starts where that range ends. `u64::MAX` lines: everything after the last dropped range, unread.
    pub fn seek_tail(&mut self, p: &Progress, i: usize, lines: u64) -> io::Result<()> {
        self.layout = p.layout();
        let end = p.written[i];
        let mut floor = if p.dropped_to[i] > p.head && p.dropped_to[i] <= end { p.dropped_to[i] } else { 0 };
        floor = p.lost[i].iter().map(|r| r.1).filter(|&to| to <= end).fold(floor, u64::max);
        self.pos[i] = tail_start(floor, end, lines, |at, n| self.read_at(i, at, n))?;
        Ok(())
    }

    /// The next event `p` makes available: output or a gap of either stream, or — once every byte of both
    /// streams is handed out — the exec's end. `None` when there is nothing new (wait for the next snapshot).
    pub fn next(&mut self, p: &Progress) -> io::Result<Option<ExecEvent>> {
        Ok(match self.next_range(p) {
            Some(Next::Event(ev)) => Some(ev),
            Some(Next::Sent { stream, offset, len }) => {
                let data = self.read(stream.index(), len)?;
                self.pos[stream.index()] += len;
                Some(ExecEvent::Output { stream, offset, data })
            }
            None => None,
        })
    }

    /// As [`Reader::next`], but output is sent to `to[stream]` (stdout's, stderr's) instead of handed out:
    /// copied by the kernel from the journal's page cache (`sendfile`, which into a pipe moves references to
    /// the pages, not the bytes), never through this process; out of a ring ([`Writer::streamed`]), read
    /// and written. Returns what was sent, gaps, and the end.
    pub fn next_sent(&mut self, p: &Progress, to: [BorrowedFd<'_>; 2]) -> io::Result<Option<Next>> {
        let next = self.next_range(p);
        if let Some(Next::Sent { stream, offset, len }) = next {
            let i = stream.index();
            self.open(i)?;
            let file = self.files[i].as_ref().expect("opened above");
            let path = self.dir.join(FILES[i]);
            let at = self.layout.at(offset);
            // Out of a ring, copies: a page it handed to a pipe by reference would be written over in place
            // while the pipe holds it, should whoever reads the pipe fall a lap behind (its reader here gone,
            // nothing holds the command back).
            let sent = match self.layout.ring {
                0 => send(file, at, len, to[i]),
                _ => pread_exact(file, len as usize, at).and_then(|data| write_all(to[i], &data)),
            };
            sent.map_err(|e| io::Error::new(e.kind(), format!("sending {}: {e}", path.display())))?;
            self.pos[i] += len;
        }
        Ok(next)
    }

    /// What comes next: a gap or the end (as an event, position moved past it), or the range of output to
    /// hand out next (as [`Next::Sent`], position not moved yet: [`Reader::send_some`] moves it).
    pub fn next_range(&mut self, p: &Progress) -> Option<Next> {
        self.layout = p.layout();
        for k in 0..2 {
            let i = (self.next_stream + k) % 2;
            if let Some(next) = self.available(i, p) {
                self.next_stream = (i + 1) % 2;
                return Some(next);
            }
        }
        match &p.end {
            Some(end) if self.pos[0] >= end.bytes[0] && self.pos[1] >= end.bytes[1] => {
                Some(Next::Event(ExecEvent::Exit(end.clone())))
            }
            _ => None,
        }
    }

    /// Moves up to `max` bytes of `stream` from the position on (within a range [`Reader::next_range`] named)
    /// into `to`, by the kernel, and moves the position past them: one `sendfile`, which into a pipe hands
    /// over references to the journal's pages. Out of a ring those pages are written over once the ring goes
    /// round, so `to` must be a pipe whose reader reads it as it fills (one that falls a lap behind gets the
    /// newer bytes). A full non-blocking `to` is `WouldBlock`.
    pub fn send_some(&mut self, stream: OutputStream, max: u64, to: BorrowedFd<'_>) -> io::Result<u64> {
        let i = stream.index();
        self.open(i)?;
        let file = self.files[i].as_ref().expect("opened above");
        let mut at = self.layout.at(self.pos[i]) as libc::off_t;
        let n = loop {
            match nix::sys::sendfile::sendfile64(to, file, Some(&mut at), max as usize) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => break n as u64,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        self.pos[i] += n;
        Ok(n)
    }

    fn available(&mut self, i: usize, p: &Progress) -> Option<Next> {
        let stream = OutputStream::BOTH[i];
        let (head, dropped_to, written) = (p.head, p.dropped_to[i], p.written[i]);
        let pos = self.pos[i];
        if pos >= head && pos < dropped_to {
            self.pos[i] = dropped_to;
            return Some(Next::Event(ExecEvent::Gap { stream, from: pos, to: dropped_to }));
        }
        if let Some(&(_, to)) = p.lost[i].iter().find(|(from, to)| pos >= *from && pos < *to) {
            self.pos[i] = to;
            return Some(Next::Event(ExecEvent::Gap { stream, from: pos, to }));
        }
        let mut limit = if pos < head && dropped_to > head { written.min(head) } else { written };
        // Up to the next lost range, which is then reported as a gap.
        if let Some(&(from, _)) = p.lost[i].iter().filter(|(from, _)| *from > pos).min() {
            limit = limit.min(from);
        }
        if pos >= limit {
            return None;
        }
        Some(Next::Sent { stream, offset: pos, len: self.layout.run(pos, (limit - pos).min(CHUNK as u64)) })
    }

    fn open(&mut self, i: usize) -> io::Result<()> {
        if self.files[i].is_none() {
            let path = self.dir.join(FILES[i]);
            let f = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            self.files[i] = Some(f);
        }
        Ok(())
    }

    fn read(&mut self, i: usize, len: u64) -> io::Result<bytes::Bytes> {
        Ok(self.read_at(i, self.pos[i], len)?.into())
    }

    fn read_at(&mut self, i: usize, at: u64, len: u64) -> io::Result<Vec<u8>> {
        self.open(i)?;
        let file = self.files[i].as_ref().expect("opened above");
        let first = self.layout.run(at, len);
        let read = || {
            let mut data = pread_exact(file, first as usize, self.layout.at(at))?;
            if first < len {
                data.extend(pread_exact(file, (len - first) as usize, self.layout.at(at + first))?);
            }
            Ok(data)
        };
        read().map_err(|e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", self.dir.join(FILES[i]).display())))
    }
}

/// Sends `len` bytes of `file` at `at` to `to` with `sendfile` (waiting while `to` is a full non-blocking
/// pipe or socket); where the kernel cannot (`to` is a terminal, a file opened for appending, ...), reads
/// and writes them instead.
fn send(file: &File, at: u64, len: u64, to: BorrowedFd<'_>) -> io::Result<()> {
    use nix::errno::Errno;
    let mut off = at as libc::off_t;
    let end = at + len;
    while (off as u64) < end {
        let want = (end - off as u64) as usize;
        match nix::sys::sendfile::sendfile64(to, file, Some(&mut off), want) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait_writable(to)?,
            Err(Errno::EINVAL | Errno::ENOSYS) => {
                let data = pread_exact(file, (end - off as u64) as usize, off as u64)?;
                return write_all(to, &data);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `data` to `to`, waiting while it is a full non-blocking pipe or socket.
pub fn write_all(to: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    use nix::errno::Errno;
    while !data.is_empty() {
        match nix::unistd::write(to, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => wait_writable(to)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    match poll(&mut [PollFd::new(fd, PollFlags::POLLOUT)], PollTimeout::NONE) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A read-only map of a stretch of a stream's file: [`Writer::append_from`] computes the CRC of what the
/// kernel spliced in there, from the page cache, instead of copying it in.
struct View {
    ptr: std::ptr::NonNull<libc::c_void>,
    /// The file offset mapped at `ptr` (page-aligned).
    at: u64,
}

impl View {
    /// Bytes mapped: 16 moves of the largest append.
    const LEN: usize = 16 * CHUNK;

    /// Adds bytes `at..at + n` of `file`, just written, to `crc`, mapping the stretch of the file that holds
    /// them first when `view` does not. Where they cannot be mapped, reads them instead.
    fn update_crc(
        view: &mut Option<View>,
        file: &File,
        at: u64,
        n: usize,
        crc: &mut crc32fast::Hasher,
    ) -> io::Result<()> {
        use nix::sys::mman::{madvise, MmapAdvise};
        if n == 0 {
            return Ok(());
        }
        let end = at + n as u64;
        if !view.as_ref().is_some_and(|v| v.at <= at && end <= v.at + Self::LEN as u64) {
            *view = None;
            *view = Self::map(file, at & !(page_size() - 1)).ok();
        }
        let Some(v) = view.as_ref() else {
            crc.update(&pread_exact(file, n, at)?);
            return Ok(());
        };
        let start = (at - v.at) as usize;
        let page = start & !(page_size() as usize - 1);
        // SAFETY: `page..start + n` lies within the map (checked above); the bytes are in the file, just written.
        let populated = unsafe { madvise(v.ptr.byte_add(page), start + n - page, MmapAdvise::MADV_POPULATE_READ) };
        if populated.is_err() {
            // (Populating first turns a page the kernel cannot bring in into an error here, not a SIGBUS.)
            crc.update(&pread_exact(file, n, at)?);
            return Ok(());
        }
        // SAFETY: the bytes are mapped and populated, and stay as they are while they are read: only this
        // writer writes the file (over them a lap later at the earliest) or punches holes in it (only in bytes
        // dropped before), and nothing truncates it.
        crc.update(unsafe { std::slice::from_raw_parts(v.ptr.as_ptr().cast::<u8>().add(start), n) });
        Ok(())
    }

    fn map(file: &File, at: u64) -> io::Result<View> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new(Self::LEN).expect("not zero");
        // SAFETY: a new shared read-only map of a file this writer owns; nothing else is mapped there.
        let ptr = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, file, at as libc::off_t)? };
        Ok(View { ptr, at })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the map made in `View::map`, of this length; nothing borrows from it past `update_crc`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, Self::LEN) };
    }
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64
}

/// `len` bytes of `file` at `at` in a new buffer, which is not zeroed first: streaming hands out a buffer per
/// MiB, and clearing each only to overwrite it cost as much as a copy.
fn pread_exact(file: &File, len: usize, at: u64) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::<u8>::with_capacity(len);
    while buf.len() < len {
        let (done, want) = (buf.len(), len - buf.len());
        // SAFETY: pread writes at most `want` bytes into the spare capacity past `done`, which the vector owns.
        let n = unsafe {
            libc::pread(file.as_raw_fd(), buf.as_mut_ptr().add(done).cast(), want, (at + done as u64) as libc::off_t)
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            },
            // SAFETY: pread initialized the `n` bytes after `done`.
            n => unsafe { buf.set_len(done + n as usize) },
        }
    }
    Ok(buf)
}

mod times;
pub use times::{TimeWriter, Times, MAX_RECORDS, TIMES_FILE, TIME_STEP_MS};

#[cfg(test)]
mod tests;
