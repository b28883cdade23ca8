//! The journal's edges, on a temp directory (no root needed).

use super::*;
use hangar_types::Ending;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh state directory, removed when dropped.
struct Dir {
    path: PathBuf,
    fd: OwnedFd,
}

impl Dir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "hangar-journal-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        let fd = nix::fcntl::open(&path, nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap();
        Self { path, fd }
    }

    fn writer(&self, cap: u64) -> Writer {
        Writer::create(self.fd.as_fd(), "ex-1", cap).unwrap()
    }

    fn reader(&self, from: [u64; 2]) -> Reader {
        Reader::new(self.path.join(dir("ex-1")), from)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Byte `n` of a test stream: every offset has its own recognisable value.
fn byte(n: u64) -> u8 {
    (n % 251) as u8
}

fn bytes_from(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64).map(byte).collect()
}

/// Appends `len` bytes of the test pattern to stream `i`, in pieces the writer has room for, dropping as it
/// goes (no reader attached) or failing when it would have to wait.
fn fill(w: &mut Writer, i: usize, len: u64) {
    let mut at = w.written()[i];
    let end = at + len;
    while at < end {
        w.make_room(i);
        assert!(!w.is_full(i), "stream {i} is full at {at} with {} readers", w.readers());
        let n = (w.room() as u64).min(end - at) as usize;
        w.append(i, &bytes_from(at, n), false).unwrap();
        at += n as u64;
    }
}

fn end_of(w: &Writer) -> ExecEnd {
    ExecEnd {
        ending: Ending::Exited { code: 0 },
        code: Some(0),
        bytes: w.written(),
        crc32: w.crc32(),
        ..Default::default()
    }
}

/// Everything a reader gets until the exit: per stream, (offset, bytes) runs and gaps.
#[derive(Debug, Default, PartialEq)]
struct Received {
    data: [Vec<u8>; 2],
    gaps: [Vec<(u64, u64)>; 2],
    end: Option<ExecEnd>,
}

fn drain(r: &mut Reader, p: &Progress) -> Received {
    let mut got = Received::default();
    let mut expect = r.position();
    while let Some(ev) = r.next(p).unwrap() {
        match ev {
            ExecEvent::Output { stream, offset, data } => {
                let i = stream.index();
                assert_eq!(offset, expect[i], "output follows on without a hole");
                assert!(data.len() <= CHUNK);
                expect[i] += data.len() as u64;
                got.data[i].extend_from_slice(&data);
            }
            ExecEvent::Gap { stream, from, to } => {
                let i = stream.index();
                assert_eq!(from, expect[i], "a gap starts where the output stopped");
                expect[i] = to;
                got.gaps[i].push((from, to));
            }
            ExecEvent::Exit(end) => {
                got.end = Some(end);
                return got;
            }
        }
    }
    got
}

#[test]
fn below_the_cap_every_byte_arrives_in_order_then_the_exit() {
    let d = Dir::new();
    let mut w = d.writer(1 << 20);
    fill(&mut w, 0, 300_000);
    fill(&mut w, 1, 1000);
    let mut r = d.reader([0, 0]);
    let before_end = drain(&mut r, &w.progress(None));
    assert_eq!(before_end.end, None, "no exit before the end is known");
    assert_eq!(before_end.data[0], bytes_from(0, 300_000));
    let end = end_of(&w);
    w.close();
    let rest = drain(&mut r, &w.progress(Some(end.clone())));
    assert_eq!(rest.end, Some(end.clone()));
    assert_eq!(rest.data, [Vec::<u8>::new(), Vec::new()], "nothing twice");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes_from(0, 300_000));
    assert_eq!(end.crc32[0], crc.finalize());
}

#[test]
fn a_stream_that_reaches_its_cap_exactly_loses_nothing() {
    let d = Dir::new();
    let cap = MIN_CAP * 4;
    let mut w = d.writer(cap);
    // Up to exactly the cap less the room one more append needs: nothing is dropped yet.
    let fits = cap - w.room() as u64;
    fill(&mut w, 0, fits);
    let p = w.progress(None);
    assert_eq!(p.dropped_to[0], p.head, "nothing dropped at the cap");
    // A reader attached at 0 pins everything: the stream is full and waits for it.
    let reader = w.attach([0, 0]);
    let room = w.room() as u64;
    fill(&mut w, 0, room);
    w.make_room(0);
    assert_eq!(w.progress(None).dropped_to[0], p.head, "a pinned byte is never dropped");
    assert!(w.is_full(0), "the writer must wait for the reader");
    w.ack(reader, [cap, 0]);
    w.make_room(0);
    assert!(!w.is_full(0), "an ack frees room");
    let mut r = d.reader([0, 0]);
    let got = drain(&mut r, &w.progress(Some(end_of(&w))));
    let total = w.written()[0];
    let dropped: u64 = got.gaps[0].iter().map(|(a, b)| b - a).sum();
    assert_eq!(got.data[0].len() as u64 + dropped, total, "bytes plus gaps add up to what was written");
}

#[test]
fn beyond_the_cap_the_head_and_tail_survive_and_the_middle_is_one_gap() {
    let d = Dir::new();
    let cap = MIN_CAP * 4;
    let mut w = d.writer(cap);
    let total = cap * 10;
    fill(&mut w, 1, total);
    let p = w.progress(Some(end_of(&w)));
    let mut r = d.reader([0, 0]);
    let got = drain(&mut r, &p);
    let head = p.head;
    assert_eq!(got.gaps[1], vec![(head, p.dropped_to[1])], "one explicit gap");
    let tail = total - p.dropped_to[1];
    assert!(tail > 0 && head + tail <= cap, "head {head} + tail {tail} within the cap {cap}");
    let mut want = bytes_from(0, head as usize);
    want.extend(bytes_from(p.dropped_to[1], tail as usize));
    assert_eq!(got.data[1], want);
    assert_eq!(got.end.unwrap().bytes, [0, total]);
    // The dropped range is a hole on disk: the file's blocks stay near the cap, not the total.
    let blocks = std::fs::metadata(d.path.join("execs/ex-1/stderr")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&blocks) * 512 <= cap + (64 << 10), "punched out");
}

#[test]
fn a_reader_behind_the_drop_point_gets_the_gap_then_the_tail() {
    let d = Dir::new();
    let cap = MIN_CAP * 4;
    let mut w = d.writer(cap);
    fill(&mut w, 0, cap * 3);
    let p = w.progress(Some(end_of(&w)));
    for from in [p.head, p.head + 1, (p.head + p.dropped_to[0]) / 2, p.dropped_to[0] - 1] {
        let mut r = d.reader([from, 0]);
        let got = drain(&mut r, &p);
        assert_eq!(got.gaps[0], vec![(from, p.dropped_to[0])], "from {from}");
        assert_eq!(got.data[0], bytes_from(p.dropped_to[0], (cap * 3 - p.dropped_to[0]) as usize));
    }
}

#[test]
fn resume_at_every_offset_gives_exactly_the_rest() {
    let d = Dir::new();
    let mut w = d.writer(MIN_CAP);
    let (n0, n1) = (3000u64, 17u64);
    fill(&mut w, 0, n0);
    fill(&mut w, 1, n1);
    let p = w.progress(Some(end_of(&w)));
    for a in 0..=n0 {
        let b = a % (n1 + 1);
        let got = drain(&mut d.reader([a, b]), &p);
        assert_eq!(got.data[0], bytes_from(a, (n0 - a) as usize), "stdout from {a}");
        assert_eq!(got.data[1], bytes_from(b, (n1 - b) as usize), "stderr from {b}");
        assert!(got.end.is_some());
    }
}

#[test]
fn concurrent_readers_each_hold_back_the_drop_and_each_get_everything() {
    let d = Dir::new();
    let cap = MIN_CAP * 4;
    let mut w = d.writer(cap);
    let (slow, fast) = (w.attach([0, 0]), w.attach([0, 0]));
    let (mut rs, mut rf) = (d.reader([0, 0]), d.reader([0, 0]));
    let (mut got_slow, mut got_fast) = (Vec::<u8>::new(), Vec::<u8>::new());
    let total = cap * 3;
    let mut at = 0u64;
    while at < total {
        // The fast reader keeps up; the slow one reads only when the writer has to wait for it.
        w.make_room(0);
        if w.is_full(0) {
            let got = drain(&mut rs, &w.progress(None));
            got_slow.extend(got.data[0].iter());
            w.ack(slow, rs.position());
            continue;
        }
        let n = (w.room() as u64).min(total - at) as usize;
        w.append(0, &bytes_from(at, n), false).unwrap();
        at += n as u64;
        let got = drain(&mut rf, &w.progress(None));
        assert!(got.gaps[0].is_empty(), "an attached reader never sees a gap");
        got_fast.extend(got.data[0].iter());
        w.ack(fast, rf.position());
    }
    let p = w.progress(Some(end_of(&w)));
    got_slow.extend(drain(&mut rs, &p).data[0].iter());
    got_fast.extend(drain(&mut rf, &p).data[0].iter());
    assert_eq!(got_slow, bytes_from(0, total as usize));
    assert_eq!(got_fast, bytes_from(0, total as usize));
    w.detach(slow);
    w.detach(fast);
    assert_eq!(w.readers(), 0);
}

/// Streams `total` bytes to stdout with one attached reader that keeps up and acks; what it got.
fn stream_through(d: &Dir, w: &mut Writer, total: u64) -> Vec<u8> {
    let from = w.written();
    let me = w.attach(from);
    let mut r = d.reader(from);
    let mut got = Vec::new();
    while w.written()[0] < total {
        let n = (total - w.written()[0]).min(256 << 10);
        fill(w, 0, n);
        let batch = drain(&mut r, &w.progress(None));
        assert!(batch.gaps[0].is_empty(), "an attached reader never sees a gap");
        got.extend(batch.data[0].iter());
        w.ack(me, r.position());
    }
    w.make_room(0);
    w.detach(me);
    got
}

#[test]
fn delivered_output_is_kept_as_head_and_recent_window_and_a_late_reader_is_told_the_gap() {
    let d = Dir::new();
    let (keep, total) = (2 << 20, 24 << 20);
    let mut w = d.writer(1 << 30).streamed(Streamed { lead: keep, keep });
    assert_eq!(stream_through(&d, &mut w, total), bytes_from(0, total as usize), "the live reader got it all");
    let p = w.progress(Some(end_of(&w)));
    let (head, dropped_to) = (p.head, p.dropped_to[0]);
    assert_eq!(head, MAX_HEAD);
    assert!(dropped_to <= total - keep && dropped_to > total - keep - DROP_STEP, "dropped to {dropped_to}");
    // The holes are real: the file holds the head and the window, not everything delivered.
    let meta = std::fs::metadata(d.path.join(dir("ex-1")).join(FILES[0])).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 <= head + (total - dropped_to) + (64 << 10), "{} bytes allocated", meta.blocks() * 512);
    let late = drain(&mut d.reader([0, 0]), &p);
    assert_eq!(late.gaps[0], vec![(head, dropped_to)]);
    let mut expect = bytes_from(0, head as usize);
    expect.extend(bytes_from(dropped_to, (total - dropped_to) as usize));
    assert_eq!(late.data[0], expect, "the head, then everything after the gap");
}

#[test]
fn a_streamed_journal_runs_a_window_ahead_of_its_slowest_reader_and_keeps_what_it_needs() {
    let d = Dir::new();
    let mib = 1 << 20;
    let mut w = d.writer(1 << 30).streamed(Streamed { lead: mib, keep: mib });
    let (slow, fast) = (w.attach([0, 0]), w.attach([0, 0]));
    w.ack(slow, [MAX_HEAD + 3 * mib + 5, 0]);
    while w.written()[0] < MAX_HEAD + 4 * mib {
        fill(&mut w, 0, mib);
        w.ack(fast, w.written());
    }
    w.make_room(0);
    assert!(w.is_full(0), "a window ahead of the slow reader: the command waits");
    assert_eq!(w.progress(None).dropped_to[0], MAX_HEAD + 3 * mib, "the fast reader's window is kept");
    assert!(w.is_full(0), "still waiting for the slow one");
    let mut r = d.reader([MAX_HEAD + 3 * mib + 5, 0]);
    let got = drain(&mut r, &w.progress(None));
    assert!(got.gaps[0].is_empty(), "the slow reader loses nothing");
    assert_eq!(got.data[0], bytes_from(MAX_HEAD + 3 * mib + 5, mib as usize - 5));
    w.ack(slow, r.position());
    w.make_room(0);
    assert!(!w.is_full(0), "it caught up: the command goes on");
}

#[test]
fn a_log_keeps_everything_delivered_up_to_its_cap() {
    let d = Dir::new();
    let total = 24 << 20;
    let mut log = d.writer(1 << 30);
    stream_through(&d, &mut log, total);
    let p = log.progress(Some(end_of(&log)));
    assert_eq!(p.dropped_to[0], p.head, "nothing dropped");
    assert_eq!(drain(&mut d.reader([0, 0]), &p).data[0], bytes_from(0, total as usize));
}

#[test]
fn bytes_that_could_not_be_written_are_a_gap_never_data() {
    let d = Dir::new();
    // Files opened read-only stand for a disk that stays full: every write fails.
    let path = d.path.join("ro");
    std::fs::write(&path, b"").unwrap();
    let ro = || File::open(&path).unwrap();
    let mut w = Writer::with_streams([Some(ro()), Some(ro())], 1 << 20);
    assert!(w.append(0, b"held", false).is_err(), "the caller keeps the bytes and waits");
    assert_eq!(w.written(), [0, 0], "nothing counted");
    w.append(0, b"lost", true).unwrap();
    w.append(0, b"more", true).unwrap();
    let p = w.progress(Some(end_of(&w)));
    assert_eq!(p.lost[0], vec![(0, 8)], "adjacent losses are one range");
    let mut r = Reader::new(d.path.clone(), [0, 0]);
    let got = drain(&mut r, &p);
    assert_eq!((got.gaps[0].clone(), got.data[0].clone()), (vec![(0, 8)], vec![]));
    assert_eq!(got.end.unwrap().bytes, [8, 0], "the totals still say what the command wrote");
}

#[test]
fn removal_leaves_nothing() {
    let d = Dir::new();
    let mut w = d.writer(MIN_CAP);
    fill(&mut w, 0, 10);
    w.close();
    Writer::remove(d.fd.as_fd(), "ex-1");
    assert!(!d.path.join("execs/ex-1").exists());
}

/// Appends `text` to stream `i` (small enough for one append).
fn write_text(w: &mut Writer, i: usize, text: &str) {
    w.append(i, text.as_bytes(), false).unwrap();
}

fn tail(d: &Dir, p: &Progress, lines: u64) -> String {
    let mut r = d.reader([0, 0]);
    r.seek_tail(p, 0, lines).unwrap();
    String::from_utf8(drain(&mut r, p).data[0].clone()).unwrap()
}

#[test]
fn a_tail_starts_at_the_nth_line_from_the_end_whether_or_not_the_last_line_is_ended() {
    let d = Dir::new();
    let mut w = d.writer(1 << 20);
    write_text(&mut w, 0, "one\ntwo\n\nfour\n");
    let p = w.progress(None);
    assert_eq!(tail(&d, &p, 1), "four\n");
    assert_eq!(tail(&d, &p, 2), "\nfour\n", "an empty line is a line");
    assert_eq!(tail(&d, &p, 4), "one\ntwo\n\nfour\n");
    assert_eq!(tail(&d, &p, 100), "one\ntwo\n\nfour\n", "more lines than there are: everything");
    assert_eq!(tail(&d, &p, 0), "");
    write_text(&mut w, 0, "fi");
    let p = w.progress(None);
    assert_eq!(tail(&d, &p, 1), "fi", "an unfinished last line counts");
    assert_eq!(tail(&d, &p, 2), "four\nfi");
}

#[test]
fn a_tail_longer_than_a_block_and_one_that_reaches_a_dropped_range() {
    let d = Dir::new();
    let cap = MIN_CAP;
    let mut w = d.writer(cap);
    // Lines of 1000 bytes: ten of them span more than one 64 KiB scan block boundary only in total.
    let line = |n: u64| format!("{:0999}\n", n);
    for n in 0..200 {
        write_text(&mut w, 0, &line(n));
        w.make_room(0);
    }
    let p = w.progress(None);
    assert!(p.dropped_to[0] > p.head, "the cap dropped a middle: {p:?}");
    let t = tail(&d, &p, 3);
    assert_eq!(t, format!("{}{}{}", line(197), line(198), line(199)));
    // Asking for more lines than survive after the dropped range: from where it ends, never into it.
    let mut r = d.reader([0, 0]);
    r.seek_tail(&p, 0, 1_000_000).unwrap();
    assert_eq!(r.position()[0], p.dropped_to[0]);
    let got = drain(&mut r, &p);
    assert!(got.gaps[0].is_empty(), "{:?}", got.gaps);
    assert_eq!(got.data[0].len() as u64, p.written[0] - p.dropped_to[0]);
}

#[test]
fn a_persisted_progress_reads_back_and_a_lost_one_is_recovered_from_the_files() {
    let d = Dir::new();
    let mut w = d.writer(MIN_CAP);
    fill(&mut w, 0, 5 * MIN_CAP);
    fill(&mut w, 1, 1000);
    let end = end_of(&w);
    w.close();
    let p = w.progress(Some(end));
    let jdir = d.path.join(dir("ex-1"));
    assert_eq!(Progress::load(&jdir), None, "nothing persisted yet");
    let recovered = Progress::recover(&jdir, MIN_CAP).unwrap();
    assert_eq!(recovered.written, p.written);
    assert_eq!(recovered.head, p.head);
    // The punched range is found to a filesystem block: never past the real drop point, and close to it.
    let block = 4096;
    assert!(recovered.dropped_to[0] <= p.dropped_to[0], "{recovered:?} vs {p:?}");
    assert!(recovered.dropped_to[0] + block > p.dropped_to[0], "{recovered:?} vs {p:?}");
    assert_eq!(recovered.dropped_to[1], p.head, "nothing dropped from the short stream");
    assert_eq!(recovered.end, None);
    persist(d.fd.as_fd(), "ex-1", &p).unwrap();
    assert_eq!(Progress::load(&jdir), Some(p.clone()));
    // A reader of the persisted journal gets the head, the one gap and the tail, then the end.
    let got = drain(&mut d.reader([0, 0]), &p);
    assert_eq!(got.gaps[0], vec![(p.head, p.dropped_to[0])]);
    assert!(got.end.is_some());
}

#[test]
fn the_time_index_dates_bytes_finds_times_and_stays_small() {
    let d = Dir::new();
    let _journal = d.writer(MIN_CAP); // the index lives in the journal's directory
    let mut w = TimeWriter::create(d.fd.as_fd(), "ex-1").unwrap();
    let mut t = Times::new(&d.path.join(dir("ex-1")));
    assert_eq!(t.at(0), None, "nothing recorded yet");
    w.note(d.fd.as_fd(), 0, 1000).unwrap();
    w.note(d.fd.as_fd(), 10, 1005).unwrap(); // within the step: not recorded
    w.note(d.fd.as_fd(), 20, 1010).unwrap();
    w.note(d.fd.as_fd(), 50, 2000).unwrap();
    assert_eq!(
        (t.at(0), t.at(15), t.at(20), t.at(49), t.at(50), t.at(1 << 20)),
        (Some(1000), Some(1000), Some(1010), Some(1010), Some(2000), Some(2000))
    );
    assert_eq!((t.since(0), t.since(1001), t.since(2000), t.since(2001)), (Some(0), Some(20), Some(50), None));
    // Past its size it thins older records out, keeping the newest; times never move later.
    for k in 0..(MAX_RECORDS as u64 + 10) {
        w.note(d.fd.as_fd(), 100 + k, 3000 + k * TIME_STEP_MS).unwrap();
    }
    let len = std::fs::metadata(d.path.join(dir("ex-1")).join(TIMES_FILE)).unwrap().len();
    assert!(len <= (MAX_RECORDS * 16) as u64, "{len}");
    let newest = 100 + MAX_RECORDS as u64 + 9;
    assert_eq!(t.at(newest), Some(3000 + (newest - 100) * TIME_STEP_MS));
    let mid = 100 + 1001;
    assert!(t.at(mid).unwrap() <= 3000 + 1001 * TIME_STEP_MS, "a time is never later than the write");
}

/// A lazy journal has no files and takes no bytes until they are made; a journal made ahead of time then
/// becomes the exec's (what it writes is read under the exec's name, and no spare is left); an exec id used
/// again, whose old journal is still there, gets a fresh, empty one all the same.
#[test]
fn a_spare_journal_becomes_the_execs_and_an_id_used_again_starts_empty() {
    let d = Dir::new();
    let made = |spare: Spare| {
        let mut w = Writer::lazy("ex-1", 1 << 20);
        w.make_files(d.fd.as_fd(), Some(spare)).unwrap();
        w
    };
    let mut lazy = Writer::lazy("ex-1", 1 << 20);
    assert!(lazy.append(0, b"early", false).is_err(), "no files yet: held, like a full disk");
    assert_eq!(lazy.written(), [0, 0]);
    assert!(!d.path.join("execs/ex-1").exists(), "nothing made on disk");
    let mut w = made(Spare::make(d.fd.as_fd()).unwrap());
    assert!(!w.unmade());
    w.append(0, b"first", false).unwrap();
    assert_eq!(std::fs::read(d.path.join("execs/ex-1/stdout")).unwrap(), b"first");
    assert!(!d.path.join("execs/.spare").exists(), "the spare was taken");
    // The same id again: the old journal is in the way of the rename.
    let mut w = made(Spare::make(d.fd.as_fd()).unwrap());
    assert_eq!(std::fs::read(d.path.join("execs/ex-1/stdout")).unwrap(), b"", "a fresh journal");
    w.append(0, b"second", false).unwrap();
    assert_eq!(std::fs::read(d.path.join("execs/ex-1/stdout")).unwrap(), b"second");
    assert!(!d.path.join("execs/.spare").exists(), "the unusable spare was removed");
}

/// Pipes the test pattern from `from` to `from + len` into stream `i` through `append_from`, as the agent's
/// pump does: what the pipe holds, moved by the kernel, until the writer of the pipe is done.
fn fill_from_pipe(w: &mut Writer, i: usize, from: u64, len: usize) {
    let (r, wr) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
    let data = bytes_from(from, len);
    let feeder = std::thread::spawn(move || write_all(wr.as_fd(), &data).unwrap());
    let mut got = 0;
    loop {
        w.make_room(i);
        match w.append_from(i, r.as_fd(), CHUNK) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_micros(50)),
            Err(e) => panic!("append_from: {e}"),
        }
    }
    feeder.join().unwrap();
    assert_eq!(got, len);
}

#[test]
fn bytes_moved_in_from_a_pipe_arrive_in_order_with_their_crc_across_many_maps_and_drops() {
    let d = Dir::new();
    // 40 MiB through a cap of 24 MiB: the CRC's map of the file moves on twice, and the middle is dropped.
    let mut w = d.writer(24 << 20);
    fill(&mut w, 0, 1000);
    fill_from_pipe(&mut w, 0, 1000, 40 << 20);
    let end = end_of(&w);
    let total = 1000 + (40 << 20);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes_from(0, total as usize));
    assert_eq!(end.crc32[0], crc.finalize(), "the CRC of every byte, those moved by the kernel too");
    assert_eq!(w.written()[0], total);
    let p = w.progress(Some(end));
    let mut r = d.reader([0, 0]);
    let got = drain(&mut r, &p);
    let head = p.head as usize;
    assert_eq!(&got.data[0][..head], &bytes_from(0, head)[..], "the head");
    let kept = total - p.dropped_to[0];
    assert!(kept > 8 << 20, "the tail is kept: {kept}");
    assert!(got.data[0].ends_with(&bytes_from(p.dropped_to[0], kept as usize)), "the tail, byte for byte");
}

#[test]
fn a_source_that_is_no_pipe_takes_nothing_and_says_so() {
    let d = Dir::new();
    let mut w = d.writer(1 << 20);
    let file = std::fs::File::open("/proc/self/stat").unwrap();
    let tty = nix::pty::openpty(None, None).unwrap();
    nix::unistd::write(&tty.slave, b"x\n").unwrap();
    for src in [file.as_fd(), tty.master.as_fd()] {
        let err = w.append_from(0, src, CHUNK).unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    }
    assert_eq!(w.written(), [0, 0]);
    let mut buf = [0u8; 8];
    let n = nix::unistd::read(&tty.master, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"x\r\n", "the terminal's bytes are still there to read");
}

/// Stream bytes `from..` as a late reader gets them through `next_sent` (`sendfile` into a file), with
/// the gaps it is told of.
fn sent_from(d: &Dir, p: &Progress, from: u64) -> (Vec<u8>, Vec<(u64, u64)>) {
    let out = d.path.join("sent");
    let file = std::fs::File::create(&out).unwrap();
    let mut r = d.reader([from, 0]);
    let mut gaps = vec![];
    loop {
        match r.next_sent(p, [file.as_fd(), file.as_fd()]).unwrap() {
            Some(Next::Event(ExecEvent::Gap { from, to, .. })) => gaps.push((from, to)),
            Some(Next::Event(ExecEvent::Exit(_))) | None => break,
            Some(_) => {}
        }
    }
    (std::fs::read(&out).unwrap(), gaps)
}

#[test]
fn a_streamed_journal_goes_round_its_ring_in_place_and_readers_get_every_byte_across_laps() {
    let d = Dir::new();
    let (mib, total) = (1 << 20, 45 << 20);
    // A 16 MiB cap: a 4 MiB head, then a 12 MiB ring, gone round three times and more.
    let mut w = d.writer(16 * mib).streamed(Streamed { lead: mib, keep: 2 * mib });
    let third = total / 3;
    assert!(stream_through(&d, &mut w, third) == bytes_from(0, third as usize), "a live reader");
    fill_from_pipe(&mut w, 0, third, third as usize);
    let last = bytes_from(2 * third, (total - 2 * third) as usize);
    assert!(stream_through(&d, &mut w, total) == last, "a live reader after the ring went round unread");
    let end = end_of(&w);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes_from(0, total as usize));
    assert_eq!(end.crc32[0], crc.finalize());
    let p = w.progress(Some(end));
    assert_eq!((p.head, p.ring), (4 * mib, 12 * mib));
    // The file is the head and the ring, written over in place: never longer, no page of it given back.
    let meta = std::fs::metadata(d.path.join(dir("ex-1")).join(FILES[0])).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), 16 * mib);
    assert!(meta.blocks() * 512 >= 16 * mib, "{} bytes allocated", meta.blocks() * 512);
    // A late reader: the head, the gap, then the kept bytes, read back from their places in the ring.
    let dropped = p.dropped_to[0];
    assert!(dropped <= total - 2 * mib, "dropped to {dropped}");
    let mut expect = bytes_from(0, p.head as usize);
    expect.extend(bytes_from(dropped, (total - dropped) as usize));
    let late = drain(&mut d.reader([0, 0]), &p);
    assert_eq!(late.gaps[0], vec![(p.head, dropped)]);
    assert!(late.data[0] == expect, "read: the head, then everything after the gap");
    let (sent, gaps) = sent_from(&d, &p, 0);
    assert_eq!(gaps, vec![(p.head, dropped)]);
    assert!(sent == expect, "sent by the kernel: the same bytes");
    // The last lines, found by reading backwards across the ring's end.
    let mut r = d.reader([0, 0]);
    r.seek_tail(&p, 0, 100_000).unwrap();
    let kept = bytes_from(dropped, (total - dropped) as usize);
    assert_eq!(r.position()[0], tail_of(&kept, dropped, 100_000));
}

#[test]
fn a_ring_is_made_only_where_it_is_larger_than_what_streaming_keeps() {
    let d = Dir::new();
    let (mib, total) = (1 << 20, 20 << 20);
    let mut w = d.writer(mib).streamed(STREAMED);
    assert_eq!(w.progress(None).ring, 0, "a 1 MiB cap: byte n at offset n, holes punched");
    assert!(stream_through(&d, &mut w, total) == bytes_from(0, total as usize));
    let meta = std::fs::metadata(d.path.join(dir("ex-1")).join(FILES[0])).unwrap();
    assert_eq!(meta.len(), total);
    let p = w.progress(None);
    let (sent, _) = sent_from(&d, &p, p.dropped_to[0]);
    assert!(sent == bytes_from(p.dropped_to[0], (total - p.dropped_to[0]) as usize));
    let w = Dir::new().writer(hangar_types::DEFAULT_JOURNAL_CAP).streamed(STREAMED);
    assert_eq!(w.progress(None).ring, hangar_types::DEFAULT_JOURNAL_CAP - MAX_HEAD, "the default cap's ring");
}

#[test]
fn bytes_sent_into_a_pipe_stay_as_they_were_when_the_ring_goes_round_before_the_pipe_is_read() {
    let d = Dir::new();
    let (mib, half) = (1 << 20, 512 << 10);
    let mut w = d.writer(16 * mib).streamed(Streamed { lead: mib, keep: 2 * mib });
    fill(&mut w, 0, 4 * mib + half);
    let (r, wr) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&wr, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
    let mut reader = d.reader([4 * mib, 0]);
    let sent = reader.next_sent(&w.progress(None), [wr.as_fd(), wr.as_fd()]).unwrap();
    assert!(matches!(sent, Some(Next::Sent { offset, len, .. }) if offset == 4 * mib && len == half), "{sent:?}");
    // The reader is gone, the pipe not read yet: the command writes on, twice round the 12 MiB ring.
    fill(&mut w, 0, 24 * mib);
    let mut got = vec![0u8; half as usize];
    let mut at = 0;
    while at < got.len() {
        at += nix::unistd::read(&r, &mut got[at..]).unwrap();
    }
    assert!(got == bytes_from(4 * mib, half as usize), "the pipe holds the bytes as they were sent");
}
