//! Readers of an exec: attachments that follow its journal, acknowledge what they consumed, and signal or
//! resize it.

use super::*;

/// Serves one reader: the exec's info, then its journal's progress, while taking acks, signals and resizes.
pub(crate) async fn attach(state: &Shared, conn: Conn, exec: &str, from: [u64; 2]) {
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
    serve_reader(e, conn, from).await
}

/// Starts (or finds) an exec and serves its first reader.
pub(crate) async fn start_and_attach(state: &Shared, conn: Conn, r: ExecSpec) {
    match start(state, r) {
        Ok(e) => serve_reader(e, conn, [0, 0]).await,
        Err((kind, message)) => {
            let _ = conn.send(&Response::Error { kind, message }).await;
        }
    }
}

pub(super) async fn serve_reader(e: ExecRef, mut conn: Conn, from: [u64; 2]) {
    let reader = {
        let mut ex = e.borrow_mut();
        ex.journal.attach(from)
    };
    let info = e.borrow().info();
    let mut progress = e.borrow().progress.subscribe();
    let w = conn.writer();
    // How long to wait before the disconnect policy applies when this attachment breaks without a goodbye.
    let mut hold = Duration::ZERO;
    let mut sent = w.send(&Response::Exec(info)).await.is_ok();
    let mut changed = true;
    while sent {
        if changed {
            let snapshot = progress.borrow_and_update().clone();
            if w.send(&Response::Progress(snapshot)).await.is_err() {
                sent = false;
                break;
            }
        }
        changed = tokio::select! {
            r = progress.changed() => if r.is_err() { break } else { true },
            msg = conn.recv::<Request>() => match msg {
                Ok(Some(m)) => if take_request(&e, reader, m, &mut hold) { break } else { false },
                Ok(None) | Err(_) => break,
            },
        };
    }
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

/// Takes one request of a reader (acks, signals, resizes, its goodbye); `true` when it said goodbye.
fn take_request(e: &ExecRef, reader: hangar_journal::ReaderId, m: Request, hold: &mut Duration) -> bool {
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
        Request::Resize { rows, cols } => {
            if let Some(pty) = &ex.pty {
                let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
                unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            }
        }
        _ => {}
    }
    false
}
