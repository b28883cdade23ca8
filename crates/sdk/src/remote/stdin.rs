//! stdin for a remote exec: bytes kept until the exec acknowledges them, re-sent from the acknowledged offset
//! on every new connection.

use super::{CHUNK, In};
use bytes::Bytes;
use hangar_proto::v1 as pb;
use std::sync::Arc;

/// stdin bytes not yet acknowledged by the exec, so they can be sent again on a new connection.
pub(crate) struct StdinBuffer {
    state: std::sync::Mutex<StdinState>,
    /// Bumped whenever there is something new to send.
    version: tokio::sync::watch::Sender<u64>,
    acked: tokio::sync::watch::Sender<u64>,
}

struct StdinState {
    /// Stream offset of `buf[0]`.
    base: u64,
    buf: std::collections::VecDeque<u8>,
    closing: bool,
    /// Terminal size to send (the latest wins).
    resize: Option<(u16, u16)>,
}

impl StdinBuffer {
    pub(super) fn new(acked: u64) -> Self {
        Self {
            state: std::sync::Mutex::new(StdinState {
                base: acked,
                buf: Default::default(),
                closing: false,
                resize: None,
            }),
            version: tokio::sync::watch::channel(0).0,
            acked: tokio::sync::watch::channel(acked).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StdinState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues bytes (and, with `close`, the end of file) for sending.
    pub(crate) fn push(&self, data: &[u8], close: bool) {
        let mut st = self.lock();
        st.buf.extend(data);
        st.closing |= close;
        drop(st);
        self.version.send_modify(|v| *v += 1);
    }

    /// Queues a terminal resize.
    pub(crate) fn resize(&self, rows: u16, cols: u16) {
        self.lock().resize = Some((rows, cols));
        self.version.send_modify(|v| *v += 1);
    }

    /// Bytes queued but not yet acknowledged.
    pub(crate) fn unacked(&self) -> u64 {
        self.lock().buf.len() as u64
    }

    /// Waits until fewer than `window` bytes are unacknowledged.
    pub(crate) async fn wait_below(&self, window: u64) {
        let mut rx = self.acked.subscribe();
        while self.unacked() >= window {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub(super) fn ack(&self, offset: u64) {
        let mut st = self.lock();
        if offset > st.base {
            let n = ((offset - st.base) as usize).min(st.buf.len());
            st.buf.drain(..n);
            st.base += n as u64;
        }
        drop(st);
        self.acked.send_replace(offset);
    }

    /// The next piece to send from `at` on: data, or the end of file once everything is sent.
    fn next_piece(&self, at: u64) -> Option<(u64, Option<Bytes>)> {
        let st = self.lock();
        let at = at.max(st.base);
        let end = st.base + st.buf.len() as u64;
        if at < end {
            let from = (at - st.base) as usize;
            let to = (from + CHUNK).min(st.buf.len());
            return Some((at, Some(st.buf.range(from..to).copied().collect::<Vec<u8>>().into())));
        }
        st.closing.then_some((at, None))
    }
}

/// Sends queued stdin on one connection, from the exec's acknowledged offset on, in order.
pub(super) async fn stdin_pump(
    tx: tokio::sync::mpsc::Sender<pb::StreamExecRequest>,
    stdin: Arc<StdinBuffer>,
    mut at: u64,
) {
    let mut version = stdin.version.subscribe();
    loop {
        version.borrow_and_update();
        let resize = stdin.lock().resize.take();
        if let Some((rows, cols)) = resize {
            let msg = In::Resize(pb::Resize { rows: rows.into(), cols: cols.into() });
            if tx.send(pb::StreamExecRequest { msg: Some(msg), pipes: None }).await.is_err() {
                return;
            }
        }
        match stdin.next_piece(at) {
            Some((offset, Some(data))) => {
                at = offset + data.len() as u64;
                let chunk = In::Stdin(pb::StdinChunk { offset, data });
                if tx.send(pb::StreamExecRequest { msg: Some(chunk), pipes: None }).await.is_err() {
                    return;
                }
            }
            Some((_, None)) => {
                let _ = tx.send(pb::StreamExecRequest { msg: Some(In::Close(pb::Close {})), pipes: None }).await;
                // Keep the request stream open: its end would look like a client that left.
                return std::future::pending().await;
            }
            None => {
                if version.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
