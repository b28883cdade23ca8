//! Following a remote exec: its events forwarded, its stdin fed, and the stream resumed at the offsets
//! received so far whenever it breaks.

use super::stdin::{StdinBuffer, stdin_pump};
use super::{Connection, Out, Remote, attach_msg};
use crate::{Error, Result};
use hangar_proto::convert::{self, REASON_KEY};
use hangar_proto::v1 as pb;
use hangar_types::ExecEvent;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle as AbortOnDrop;
use tonic::Status;

/// How long a broken exec stream keeps trying to resume before it reports the connection lost.
const RESUME_WINDOW: Duration = Duration::from_secs(120);

/// Follows one exec for a [`RemoteExec`]: forwards its events, feeds its stdin, and whenever the stream
/// breaks (connection lost, server restarted, nothing heard for three keepalive periods) attaches again at
/// the offsets received so far.
pub(super) struct Driver {
    pub(super) remote: Remote,
    pub(super) sandbox: String,
    pub(super) exec: String,
    pub(super) pos: [u64; 2],
    pub(super) keepalive_ms: u64,
    pub(super) stdin: Arc<StdinBuffer>,
    pub(super) events: tokio::sync::mpsc::Sender<Result<ExecEvent>>,
}

impl Driver {
    pub(super) async fn run(mut self, mut conn: Connection, acked: u64) {
        let mut pump = AbortOnDrop::new(tokio::spawn(stdin_pump(conn.tx.clone(), self.stdin.clone(), acked)));
        let keepalive =
            if self.keepalive_ms == 0 { Duration::from_secs(15) } else { Duration::from_millis(self.keepalive_ms) };
        let idle = keepalive * 3 + Duration::from_secs(1);
        loop {
            let broken = match tokio::time::timeout(idle, conn.message()).await {
                Ok(Ok(Some(m))) => match self.on_frame(m.msg).await {
                    Some(true) => continue,
                    Some(false) => return,
                    None => unreachable!(),
                },
                Ok(Ok(None)) => "the server's stream ended before the command did".to_string(),
                // An answer of the server's (it names a reason) is final; anything else is the transport.
                Ok(Err(s)) if s.metadata().get(REASON_KEY).is_some() => {
                    let _ = self.events.send(Err(self.remote.error(s, &self.sandbox))).await;
                    return;
                }
                Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
                Err(_) => format!("nothing heard for {idle:?}"),
            };
            drop(pump);
            drop(conn);
            match self.resume(&broken).await {
                Ok((c, ready)) => {
                    self.stdin.ack(ready.stdin_acked);
                    pump =
                        AbortOnDrop::new(tokio::spawn(stdin_pump(c.tx.clone(), self.stdin.clone(), ready.stdin_acked)));
                    conn = c;
                }
                Err(e) => {
                    let _ = self.events.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    /// Handles one frame: `Some(true)` to go on, `Some(false)` when the exec's stream is over. Output is
    /// passed on from where this client stands: a frame that starts before it (replayed after a resume) is
    /// trimmed; one that starts after it is passed on as is, and the handle reports the hole exactly as the
    /// embedded engine would ([`Error::IncompleteOutput`]).
    async fn on_frame(&mut self, msg: Option<Out>) -> Option<bool> {
        let ev = match msg {
            Some(Out::StdinAck(a)) => {
                self.stdin.ack(a.offset);
                return Some(true);
            }
            Some(Out::Error(e)) => {
                let mut s = Status::internal(e.message);
                if let Ok(v) = e.reason.parse() {
                    s.metadata_mut().insert(REASON_KEY, v);
                }
                let _ = self.events.send(Err(self.remote.error(s, &self.sandbox))).await;
                return Some(false);
            }
            Some(m) => match convert::exec_event(&m) {
                Some(ev) => ev,
                None => return Some(true), // ready, keepalive
            },
            None => return Some(true),
        };
        let ev = match ev {
            ExecEvent::Output { stream, offset, data } => {
                let i = stream.index();
                let end = offset + data.len() as u64;
                if end <= self.pos[i] {
                    return Some(true); // already delivered
                }
                let skip = self.pos[i].saturating_sub(offset);
                self.pos[i] = end;
                ExecEvent::Output { stream, offset: offset + skip, data: data.slice(skip as usize..) }
            }
            ExecEvent::Gap { stream, from, to } => {
                self.pos[stream.index()] = self.pos[stream.index()].max(to);
                ExecEvent::Gap { stream, from, to }
            }
            ExecEvent::Exit(end) => {
                let _ = self.events.send(Ok(ExecEvent::Exit(end))).await;
                return Some(false);
            }
        };
        Some(self.events.send(Ok(ev)).await.is_ok())
    }

    async fn resume(&self, why: &str) -> Result<(Connection, pb::Ready)> {
        let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
        let mut backoff = Duration::from_millis(20);
        loop {
            let first = attach_msg(&self.sandbox, &self.exec, self.pos, self.keepalive_ms);
            match self.remote.open_exec(&self.sandbox, first).await {
                Ok(c) => return Ok(c),
                Err(e @ (Error::Connection(_) | Error::Internal(_))) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(Error::Connection(format!(
                            "exec {} in sandbox {}: stream broke ({why}) and could not resume within {RESUME_WINDOW:?}: {e}",
                            self.exec, self.sandbox
                        )));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
