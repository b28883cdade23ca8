//! When a journal's bytes were written: an index of `(offset, Unix ms)` records, one whenever a chunk arrives
//! at least [`TIME_STEP_MS`] after the last record, in [`TIMES_FILE`] beside the stream's file. It gives a
//! log's lines their times (to the step) and finds where a log stands at a time. Kept small: beyond
//! [`MAX_RECORDS`] every other older record is dropped (older times get coarser, never wrong: a line's time is
//! that of the last record at or before it, so it is never later than when the line was written).

use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The index's file name in a journal's directory (it indexes stream 0).
pub const TIMES_FILE: &str = "times";
/// Least time between two records.
pub const TIME_STEP_MS: u64 = 10;
/// Most records kept (16 bytes each).
pub const MAX_RECORDS: usize = 1 << 16;
const RECORD: usize = 16;

/// The writing side, the agent's.
pub struct TimeWriter {
    rel: String,
    file: File,
    records: Vec<(u64, u64)>,
}

impl TimeWriter {
    /// Creates exec `exec`'s index under `state_dir` (empty).
    pub fn create(state_dir: BorrowedFd<'_>, exec: &str) -> io::Result<Self> {
        let rel = format!("{}/{TIMES_FILE}", crate::dir(exec));
        Ok(Self { file: open(state_dir, &rel)?, rel, records: Vec::new() })
    }

    /// Bytes from `offset` on arrive at `ms`.
    pub fn note(&mut self, state_dir: BorrowedFd<'_>, offset: u64, ms: u64) -> io::Result<()> {
        if self.records.last().is_some_and(|&(o, t)| o == offset || ms < t + TIME_STEP_MS) {
            return Ok(());
        }
        if self.records.len() >= MAX_RECORDS {
            self.compact(state_dir)?;
        }
        self.file.write_all_at(&encode(&[(offset, ms)]), (self.records.len() * RECORD) as u64)?;
        self.records.push((offset, ms));
        Ok(())
    }

    /// Keeps every other record (and the newest), written to a new file renamed over the old one, so a
    /// reader sees one whole index or the other.
    fn compact(&mut self, state_dir: BorrowedFd<'_>) -> io::Result<()> {
        let last = self.records.last().copied();
        let mut kept: Vec<_> = self.records.iter().copied().step_by(2).collect();
        if kept.last().copied() != last {
            kept.extend(last);
        }
        let tmp = format!("{}.tmp", self.rel);
        let file = open(state_dir, &tmp)?;
        file.write_all_at(&encode(&kept), 0)?;
        nix::fcntl::renameat(state_dir, tmp.as_str(), state_dir, self.rel.as_str())?;
        (self.file, self.records) = (file, kept);
        Ok(())
    }
}

fn open(state_dir: BorrowedFd<'_>, rel: &str) -> io::Result<File> {
    use nix::fcntl::{openat, OFlag};
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC;
    Ok(File::from(openat(state_dir, rel, flags, nix::sys::stat::Mode::from_bits_truncate(0o600))?))
}

fn encode(records: &[(u64, u64)]) -> Vec<u8> {
    records.iter().flat_map(|(o, t)| o.to_le_bytes().into_iter().chain(t.to_le_bytes())).collect()
}

/// The reading side: an index followed as it grows (only the new records are read; a compacted index is read
/// again whole).
#[derive(Debug, Default)]
pub struct Times {
    path: PathBuf,
    inode: u64,
    records: Vec<(u64, u64)>,
}

impl Times {
    /// The index in journal directory `dir` (empty until there is one).
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join(TIMES_FILE), ..Self::default() }
    }

    /// An index held in memory: (offset, Unix ms) records, in order (a log's times known some other way).
    pub fn from_records(records: Vec<(u64, u64)>) -> Self {
        Self { records, ..Self::default() }
    }

    /// Reads what was added since the last refresh.
    pub fn refresh(&mut self) {
        let Ok(file) = File::open(&self.path) else { return };
        let Ok(meta) = file.metadata() else { return };
        if meta.ino() != self.inode {
            (self.inode, self.records) = (meta.ino(), Vec::new());
        }
        let have = (self.records.len() * RECORD) as u64;
        let whole = meta.len() / RECORD as u64 * RECORD as u64;
        if whole <= have {
            return;
        }
        let mut buf = vec![0u8; (whole - have) as usize];
        if file.read_exact_at(&mut buf, have).is_ok() {
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
            self.records.extend(buf.chunks_exact(RECORD).map(|r| (word(&r[..8]), word(&r[8..]))));
        }
    }

    /// When the byte at `offset` was written, to the index's step: the time of the last record at or before
    /// it (refreshed first when `offset` is past the newest record).
    pub fn at(&mut self, offset: u64) -> Option<u64> {
        if self.records.last().is_none_or(|&(o, _)| offset > o) {
            self.refresh();
        }
        let i = self.records.partition_point(|&(o, _)| o <= offset);
        i.checked_sub(1).map(|i| self.records[i].1)
    }

    /// The offset of the first bytes written at or after `ms`, if any were.
    pub fn since(&mut self, ms: u64) -> Option<u64> {
        self.refresh();
        let i = self.records.partition_point(|&(_, t)| t < ms);
        self.records.get(i).map(|&(o, _)| o)
    }
}
