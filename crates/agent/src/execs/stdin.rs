//! An exec's stdin: written by clients, resumable by offset, acknowledged once the process took it.

use super::*;

/// Serves a stdin connection: resumes at `offset` (skipping what was already written), then writes each
/// chunk to the process and acknowledges it.
pub(crate) async fn stdin(state: &Shared, mut conn: Conn, exec: &str, offset: u64) {
    let fail = |kind, message: String| Response::Error { kind, message };
    let e = match lookup(state, exec) {
        Ok(e) => e,
        Err((kind, message)) => {
            let _ = conn.send(&fail(kind, message)).await;
            return;
        }
    };
    let sink = e.borrow().stdin.clone();
    let mut sink = sink.lock().await;
    let (acked, open) = (e.borrow().stdin_acked, e.borrow().stdin_open);
    if !open || sink.is_none() {
        let _ = conn.send(&fail(ErrorKind::InvalidArgument, format!("exec {exec}: stdin is closed"))).await;
        return;
    }
    if offset > acked {
        let msg = format!("exec {exec}: stdin offset {offset} is past the {acked} bytes written so far");
        let _ = conn.send(&fail(ErrorKind::InvalidArgument, msg)).await;
        return;
    }
    if conn.send(&Response::StdinAck { acked }).await.is_err() {
        return;
    }
    let mut at = offset;
    let mut buf = Vec::new();
    loop {
        let reply = match conn.recv::<Request>().await {
            Ok(Some(Request::StdinData { len })) => {
                buf.clear();
                if conn
                    .recv_raw(len, |c| {
                        buf.extend_from_slice(c);
                        Ok(())
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let acked = e.borrow().stdin_acked;
                let skip = (acked.saturating_sub(at) as usize).min(buf.len());
                at += len;
                match write_all(sink.as_ref().expect("checked open"), &buf[skip..]).await {
                    Ok(()) => {
                        let mut ex = e.borrow_mut();
                        ex.stdin_acked = ex.stdin_acked.max(at);
                        Response::StdinAck { acked: ex.stdin_acked }
                    }
                    Err(er) => {
                        sink.take();
                        e.borrow_mut().stdin_open = false;
                        let _ = conn
                            .send(&fail(ErrorKind::Other, format!("exec {exec}: stdin closed by the command ({er})")))
                            .await;
                        return;
                    }
                }
            }
            // Between the bytes before and after it: a command that reads its next line sees the new size.
            Ok(Some(Request::Resize { rows, cols })) => {
                e.borrow().resize(rows, cols);
                Response::StdinAck { acked: e.borrow().stdin_acked }
            }
            Ok(Some(Request::StdinClose)) => {
                let tty = e.borrow().tty;
                if tty {
                    // A terminal has no end of file of its own: send its EOF character (^D).
                    let _ = write_all(sink.as_ref().expect("checked open"), b"\x04").await;
                } else {
                    sink.take();
                    e.borrow_mut().stdin_open = false;
                }
                let acked = e.borrow().stdin_acked;
                let _ = conn.send(&Response::StdinAck { acked }).await;
                return;
            }
            _ => return,
        };
        if conn.send(&reply).await.is_err() {
            return;
        }
    }
}

pub(super) async fn write_all(sink: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = sink.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}
