//! Readers of an exec: attachments that follow its journal, acknowledge what they consumed, and signal or
//! resize it.

use super::*;
use hangar_agent_protocol::codec::{self, Writer};
use hangar_agent_protocol::INLINE_WINDOW;
use hangar_journal::ReaderId;
use hangar_types::ExecEvent;
use std::cell::Cell;

/// Serves one reader: the exec's info, then its journal's progress (or, `inline`, its journal's contents),
/// while taking acks, signals and resizes.
pub(crate) async fn attach(state: &Shared, conn: Conn, exec: &str, from: [u64; 2], inline: bool) {
    let e = match lookup(state, exec) {
        Ok(e) if e.borrow().expired => {
            let _ = conn
                .send(&Response::Error {
                    kind: ErrorKind::ExecExpired,
                    message: format!("exec {exec}: its output expired (retention passed)"),
                })
                .await;
            return;
        }
        Ok(e) => e,
        Err((kind, message)) => {
            let _ = conn.send(&Response::Error { kind, message }).await;
            return;
        }
    };
    let _counted = inline.then(|| Counted::new(state));
    serve_reader(e, conn, from, inline).await
}

/// Counts an inline attachment while it is served (see `State::inline_readers`).
struct Counted(Shared);

impl Counted {
    fn new(state: &Shared) -> Self {
        state.borrow_mut().inline_readers += 1;
        Self(state.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.borrow_mut().inline_readers -= 1;
    }
}

/// Starts (or finds) an exec and serves its first reader.
pub(crate) async fn start_and_attach(state: &Shared, conn: Conn, r: ExecSpec, inline: bool) {
    match start(state, r) {
        Ok(e) => {
            let _counted = inline.then(|| Counted::new(state));
            serve_reader(e, conn, [0, 0], inline).await
        }
        Err((kind, message)) => {
            let _ = conn.send(&Response::Error { kind, message }).await;
        }
    }
}

pub(super) async fn serve_reader(e: ExecRef, mut conn: Conn, from: [u64; 2], inline: bool) {
    let reader = {
        let mut ex = e.borrow_mut();
        ex.journal.attach(from)
    };
    let info = Response::Exec(e.borrow().info());
    // How long to wait before the disconnect policy applies when this attachment breaks without a goodbye.
    let mut hold = Duration::ZERO;
    let sent = match inline {
        true => conn.send(&info).await.is_ok() && send_inline(&e, &mut conn, reader, from, &mut hold).await,
        false => send_progress(&e, &mut conn, reader, &mut hold, info).await,
    };
    if !sent {
        // The client closed while we wrote: what it sent before closing (a kill, then a drop) still counts.
        while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_millis(100), conn.recv::<Request>()).await {
            if take_request(&e, reader, m, &mut hold) {
                break;
            }
        }
    }
    let mut ex = e.borrow_mut();
    ex.journal.detach(reader);
    ex.left_at = Instant::now();
    ex.space.notify_waiters();
    if let (0, None, OnDisconnect::Kill { grace_ms }) = (ex.journal.readers(), &ex.end, ex.policy) {
        let e = e.clone();
        tokio::task::spawn_local(async move {
            let grace = Duration::from_millis(grace_ms).max(hold);
            tokio::time::sleep(grace).await;
            let mut ex = e.borrow_mut();
            // Nobody came back, and nobody came and left again since (that reader's own timer decides).
            if ex.journal.readers() == 0 && ex.left_at.elapsed() >= grace {
                ex.kill_for(Ending::Cancelled);
            }
        });
    }
}

/// Sends `first` (the exec's info) with the journal's progress, then the progress whenever it changes, until
/// the reader leaves; `false` when a send failed. A task of its own sends while this one takes the reader's
/// requests, as for an inline attachment: a reader that stops reading while news piles up (its connection
/// full) still has its acks, signals and goodbye taken.
async fn send_progress(e: &ExecRef, conn: &mut Conn, reader: ReaderId, hold: &mut Duration, first: Response) -> bool {
    let mut progress = e.borrow().progress.subscribe();
    let w = conn.writer();
    let end_sent = Rc::new(Cell::new(false));
    let (exec, ended) = (e.clone(), end_sent.clone());
    let mut sender = tokio::task::spawn_local(async move {
        // The info and the first snapshot in one write: the reader wakes once for both.
        let Ok(mut frames) = codec::encode(&first) else { return false };
        loop {
            let snapshot = progress.borrow_and_update().clone();
            let last = snapshot.end.is_some();
            let Ok(frame) = codec::encode(&Response::Progress(snapshot)) else { return false };
            frames.extend_from_slice(&frame);
            if w.send_raw(&frames).await.is_err() {
                return false;
            }
            frames.clear();
            ended.set(last);
            if last && served(&exec, reader) {
                return true;
            }
            if progress.changed().await.is_err() {
                return true;
            }
        }
    });
    let sent = loop {
        tokio::select! {
            r = &mut sender => break r.unwrap_or(false),
            msg = conn.recv::<Request>() => match msg {
                Ok(Some(m)) => if take_request(e, reader, m, hold) || (end_sent.get() && served(e, reader)) { break true },
                Ok(None) | Err(_) => break true,
            },
        }
    };
    sender.abort();
    sent
}

/// Serves an inline attachment (see [`Request::Inline`]): a task of its own sends the journal's contents while
/// this one takes the reader's requests, so that a kill is carried out even while the reader is not reading.
/// `false` when a send failed.
async fn send_inline(e: &ExecRef, conn: &mut Conn, reader: ReaderId, from: [u64; 2], hold: &mut Duration) -> bool {
    let window = Rc::new(RefCell::new(Window { acked: from, seek: None }));
    let wake = Rc::new(Notify::new());
    let end_sent = Rc::new(Cell::new(false));
    let sending = Sending { window: window.clone(), wake: wake.clone(), reader, end_sent: end_sent.clone() };
    let mut sender = tokio::task::spawn_local(send_journal(e.clone(), conn.writer(), from, sending));
    let sent = loop {
        tokio::select! {
            done = &mut sender => break done.unwrap_or(false),
            msg = conn.recv::<Request>() => match msg {
                Ok(Some(seek @ (Request::SeekTail { .. } | Request::SeekSince { .. }))) => {
                    window.borrow_mut().seek = Some(seek);
                    wake.notify_one();
                }
                Ok(Some(m)) => {
                    if let Request::Ack { pos } = m {
                        let mut w = window.borrow_mut();
                        w.acked = [w.acked[0].max(pos[0]), w.acked[1].max(pos[1])];
                        wake.notify_one();
                    }
                    if take_request(e, reader, m, hold) || (end_sent.get() && served(e, reader)) {
                        break true;
                    }
                }
                Ok(None) | Err(_) => break true,
            },
        }
    };
    sender.abort();
    sent
}

/// What an inline attachment's reader acknowledged, and a seek it asked for.
struct Window {
    acked: [u64; 2],
    seek: Option<Request>,
}

/// What an inline attachment's sender shares with the task that takes its reader's requests.
struct Sending {
    window: Rc<RefCell<Window>>,
    /// Notified when the window moved or a seek came.
    wake: Rc<Notify>,
    reader: ReaderId,
    /// Set once the end went out.
    end_sent: Rc<Cell<bool>>,
}

/// Whether `reader` has all it will ever get of `e`: the exec ended and the reader acknowledged every byte.
/// Once it was also sent the end, its attachment closes without waiting for the reader to hang up. (The reader
/// would only hang up next: a wait that cost the agent a wake-up, when the reader's read of the end made room
/// in the socket, and another at its close, both while the reader was on its way to its next request.)
fn served(e: &ExecRef, reader: ReaderId) -> bool {
    let ex = e.borrow();
    ex.end.is_some() && ex.journal.has_all(reader)
}

/// Sends the journal from `from` on: output with its bytes, gaps, and after the last byte the end, never more
/// than [`INLINE_WINDOW`] bytes beyond what the reader acknowledged; a seek starts again from what the reader
/// acknowledged (what is in flight, it discards). `false` when a send failed.
async fn send_journal(e: ExecRef, w: Writer, from: [u64; 2], sending: Sending) -> bool {
    let Sending { window, wake, reader, end_sent } = sending;
    let dir =
        std::path::Path::new("/proc/self/fd").join(STATE_DIR_FD.to_string()).join(hangar_journal::dir(&e.borrow().id));
    let mut journal = hangar_journal::Reader::new(dir, from);
    let mut progress = e.borrow().progress.subscribe();
    let mut ended = false;
    loop {
        let p = progress.borrow_and_update().clone();
        let seek = window.borrow_mut().seek.take();
        if let Some(seek) = seek {
            journal.seek(window.borrow().acked);
            match seek {
                Request::SeekTail { lines } => {
                    for i in 0..2 {
                        let _ = journal.seek_tail(&p, i, lines);
                    }
                }
                Request::SeekSince { ms } => journal.seek_since(&p, ms),
                _ => {}
            }
            (window.borrow_mut().acked, ended) = (journal.position(), false);
            if w.send(&Response::Seeked { pos: journal.position() }).await.is_err() {
                return false;
            }
            continue;
        }
        let [out, err] = journal.position();
        let acked = window.borrow().acked;
        let open = out.saturating_sub(acked[0]) + err.saturating_sub(acked[1]) < INLINE_WINDOW;
        let next = match ended || !open {
            true => Ok(None),
            false => journal.next(&p),
        };
        let sent = match next {
            Ok(Some(ExecEvent::Output { stream, offset, data })) => {
                let len = data.len() as u64;
                match w.send(&Response::Output { stream, offset, len }).await {
                    Ok(()) => w.send_raw(&data).await,
                    Err(e) => Err(e),
                }
            }
            Ok(Some(ExecEvent::Gap { stream, from, to })) => w.send(&Response::Gap { stream, from, to }).await,
            Ok(Some(ExecEvent::Exit(end))) => {
                ended = true;
                if w.send(&Response::Ended(end)).await.is_err() {
                    return false;
                }
                end_sent.set(true);
                if served(&e, reader) {
                    return true;
                }
                Ok(())
            }
            Ok(None) => {
                tokio::select! {
                    r = progress.changed(), if !ended => if r.is_err() { return true },
                    () = wake.notified() => {}
                }
                Ok(())
            }
            Err(er) => {
                let message = format!("exec {}: reading its journal: {er}", e.borrow().id);
                let _ = w.send(&Response::Error { kind: ErrorKind::Other, message }).await;
                return true;
            }
        };
        if sent.is_err() {
            return false;
        }
    }
}

/// Takes one request of a reader (acks, signals, resizes, its goodbye); `true` when it said goodbye.
fn take_request(e: &ExecRef, reader: ReaderId, m: Request, hold: &mut Duration) -> bool {
    let mut ex = e.borrow_mut();
    match m {
        Request::Detach => {
            *hold = Duration::ZERO;
            return true;
        }
        Request::Hold { grace_ms } => *hold = Duration::from_millis(grace_ms),
        Request::Ack { pos } => {
            ex.journal.ack(reader, pos);
            ex.space.notify_waiters();
        }
        Request::Signal { signal, .. } => {
            let _ = ex.on_signal(signal);
        }
        Request::Resize { rows, cols } => ex.resize(rows, cols),
        _ => {}
    }
    false
}
