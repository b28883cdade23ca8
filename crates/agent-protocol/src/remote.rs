//! Reaching an agent over one byte stream rather than a unix socket per request: the agent of a Kubernetes
//! Pod (`hangar-agent pod`), which the engine reaches through the API server's port-forward.
//!
//! Opening a port-forward costs an HTTP upgrade through the API server (24 ms measured on the test cluster),
//! so the engine keeps one stream per sandbox and carries every agent connection over it as a yamux stream:
//! each [`Mux::open`] is one [`Conn`], exactly what a unix socket connection is on the local backend, so the
//! request handlers on both sides are the same code.
//!
//! The stream starts with a handshake before yamux takes it: the client sends [`Hello`] with the sandbox's
//! token, the agent answers [`crate::Response::Done`] or an error, and closes on a wrong token. The Pod holds
//! only the token's SHA-256 ([`token_digest`]), so reading the Pod's spec does not give the token away.

use crate::codec::{encode, read_frame, Conn};
use crate::{ErrorKind, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::future::{poll_fn, Future};
use std::io;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// The first frame on a stream to a remote agent. (No `Debug`: it holds a secret.)
#[derive(Serialize, Deserialize)]
pub struct Hello {
    /// The sandbox's token.
    pub token: String,
}

/// The hex SHA-256 of a sandbox token: what the agent is told, and checks [`Hello::token`] against.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// At most this many agent connections are open at once over one stream.
const MAX_STREAMS: usize = 1024;

fn config() -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // No cap on the connection's receive window: both ends are Hangar's, and each stream's window only grows
    // with what its reader actually reads.
    cfg.set_max_connection_receive_window(None).set_max_num_streams(MAX_STREAMS);
    cfg
}

/// The client end of a stream to a remote agent: opens agent connections over it. Cloning shares the stream.
/// The stream closes when every clone and every connection opened from it are gone.
#[derive(Clone)]
pub struct Mux {
    open: mpsc::UnboundedSender<oneshot::Sender<io::Result<yamux::Stream>>>,
    close: std::sync::Arc<tokio::sync::Notify>,
}

impl Mux {
    /// Greets the agent at the other end of `stream` with `token` and, once it accepted, carries connections
    /// over the stream. A wrong token is [`io::ErrorKind::PermissionDenied`].
    pub async fn dial<S>(mut stream: S, token: &str) -> io::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        stream.write_all(&encode(&Hello { token: token.to_string() })?).await?;
        stream.flush().await?;
        match read_frame::<Response>(&mut stream).await? {
            Response::Done => {}
            Response::Error { kind: ErrorKind::PermissionDenied, message } => {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, message))
            }
            other => return Err(io::Error::other(format!("unexpected handshake reply {other:?}"))),
        }
        let mut conn = yamux::Connection::new(stream.compat(), config(), yamux::Mode::Client);
        let (open, mut requests) = mpsc::unbounded_channel::<oneshot::Sender<io::Result<yamux::Stream>>>();
        let close = std::sync::Arc::new(tokio::sync::Notify::new());
        let closing = close.clone();
        tokio::spawn(async move {
            // One task drives the connection: it opens streams on request and must keep polling for inbound
            // ones (the agent opens none) because that is what moves every stream's frames.
            let mut pending: Option<oneshot::Sender<io::Result<yamux::Stream>>> = None;
            let mut requests_open = true;
            let mut closed = std::pin::pin!(closing.notified());
            poll_fn(|cx| loop {
                if closed.as_mut().poll(cx).is_ready() {
                    // Dropping the connection ends every stream over it.
                    return Poll::Ready(());
                }
                if pending.is_none() && requests_open {
                    match requests.poll_recv(cx) {
                        Poll::Ready(Some(tx)) => pending = Some(tx),
                        Poll::Ready(None) => requests_open = false,
                        Poll::Pending => {}
                    }
                }
                if pending.is_some() {
                    if let Poll::Ready(opened) = conn.poll_new_outbound(cx) {
                        let opened = opened.map_err(io::Error::other);
                        let _ = pending.take().expect("a pending open").send(opened);
                        continue;
                    }
                }
                match conn.poll_next_inbound(cx) {
                    // The agent opens no streams; one it opens anyway is refused by dropping it.
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
                if !requests_open {
                    // Every handle and connection is gone (each connection holds a handle): close.
                    return conn.poll_close(cx).map(drop);
                }
                return Poll::Pending;
            })
            .await;
            // Dropping the pending and queued opens (and the receiver) fails them: `open` says the stream closed.
        });
        Ok(Self { open, close })
    }

    /// Closes the stream now, whoever still holds connections over it: each of them ends (the agent is known to
    /// be gone, and a transport that failed to notice must not keep a reader waiting).
    pub fn close(&self) {
        self.close.notify_one();
    }

    /// A new connection to the agent.
    pub async fn open(&self) -> io::Result<Conn> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the agent's stream closed");
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).map_err(|_| closed())?;
        let stream = rx.await.map_err(|_| closed())??;
        Ok(Conn::over(MuxStream { inner: stream.compat(), _mux: self.open.clone() }))
    }

    /// Whether the stream has closed (the agent or the transport went away).
    pub fn is_closed(&self) -> bool {
        self.open.is_closed()
    }
}

/// One connection's yamux stream, keeping the stream it travels over open while it lives.
struct MuxStream {
    inner: tokio_util::compat::Compat<yamux::Stream>,
    _mux: mpsc::UnboundedSender<oneshot::Sender<io::Result<yamux::Stream>>>,
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The agent's end of a stream: checks the client's [`Hello`] against `digest` (see [`token_digest`]) and
/// then yields each connection the client opens. Returns an error, having told the client, on a wrong token.
pub async fn accept<S>(mut stream: S, digest: &str) -> io::Result<mpsc::Receiver<Conn>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let hello: Hello = read_frame(&mut stream).await?;
    if token_digest(&hello.token) != digest {
        let refused = Response::Error { kind: ErrorKind::PermissionDenied, message: "wrong sandbox token".into() };
        let _ = stream.write_all(&encode(&refused)?).await;
        let _ = stream.shutdown().await;
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "a client sent a wrong sandbox token"));
    }
    stream.write_all(&encode(&Response::Done)?).await?;
    stream.flush().await?;
    let mut conn = yamux::Connection::new(stream.compat(), config(), yamux::Mode::Server);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Ends, closing the stream, when the client closes it or nobody takes connections any more.
        loop {
            let next = tokio::select! {
                next = poll_fn(|cx| conn.poll_next_inbound(cx)) => next,
                () = tx.closed() => return,
            };
            match next {
                Some(Ok(s)) => {
                    if tx.send(Conn::over(s.compat())).await.is_err() {
                        return;
                    }
                }
                Some(Err(_)) | None => return,
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    #[tokio::test(flavor = "current_thread")]
    async fn many_connections_over_one_stream_keep_their_bytes_apart() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let digest = token_digest("s3cret");
        let agent = tokio::spawn(async move {
            let mut conns = accept(server, &digest).await.unwrap();
            while let Some(mut conn) = conns.recv().await {
                tokio::spawn(async move {
                    // Echo: each request is answered with its own pid, then 1 MiB of raw bytes tagged by it.
                    let Some(Request::Ping) = conn.recv::<Request>().await.unwrap() else { panic!("not a ping") };
                    let Some(Request::Signal { exec, .. }) = conn.recv::<Request>().await.unwrap() else {
                        panic!("not a signal")
                    };
                    let tag = exec.as_bytes()[0];
                    conn.send(&Response::Pong { main_pid: tag as i32 }).await.unwrap();
                    conn.writer().send_raw(&vec![tag; 1 << 20]).await.unwrap();
                });
            }
        });
        let mux = Mux::dial(client, "s3cret").await.unwrap();
        let mut tasks = Vec::new();
        for tag in b'a'..=b'p' {
            let mux = mux.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = mux.open().await.unwrap();
                conn.send(&Request::Ping).await.unwrap();
                conn.send(&Request::Signal { exec: (tag as char).to_string(), signal: 0 }).await.unwrap();
                let Some(Response::Pong { main_pid }) = conn.recv::<Response>().await.unwrap() else { panic!() };
                assert_eq!(main_pid, tag as i32);
                let mut got = 0u64;
                conn.recv_raw(1 << 20, |chunk| {
                    assert!(chunk.iter().all(|&b| b == tag), "bytes of another connection");
                    got += chunk.len() as u64;
                    Ok(())
                })
                .await
                .unwrap();
                assert_eq!(got, 1 << 20);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(mux);
        agent.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wrong_token_is_refused_and_named() {
        let (client, server) = tokio::io::duplex(4096);
        let agent = tokio::spawn(async move { accept(server, &token_digest("right")).await.map(drop) });
        let err = Mux::dial(client, "wrong").await.err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("wrong sandbox token"), "{err}");
        assert_eq!(agent.await.unwrap().unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    /// A stream closed by its client (the agent's Pod is known to be gone) ends the connections over it at
    /// once, even when the transport below never says so.
    #[tokio::test(flavor = "current_thread")]
    async fn closing_a_stream_ends_its_connections() {
        let (client, server) = tokio::io::duplex(4096);
        let agent = tokio::spawn(async move {
            let mut conns = accept(server, &token_digest("t")).await.unwrap();
            let held = conns.recv().await;
            std::future::pending::<()>().await;
            drop(held);
        });
        let mux = Mux::dial(client, "t").await.unwrap();
        let mut conn = mux.open().await.unwrap();
        conn.send(&Request::Ping).await.unwrap();
        mux.close();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(2), conn.recv::<Response>()).await;
        assert!(
            matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
            "the connection did not end: {:?}",
            ended.map(|r| r.map(|_| ()))
        );
        assert!(mux.open().await.is_err());
        agent.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn opening_after_the_agent_went_is_an_error_not_a_hang() {
        let (client, server) = tokio::io::duplex(4096);
        let agent = tokio::spawn(async move { accept(server, &token_digest("t")).await.unwrap() });
        let mux = Mux::dial(client, "t").await.unwrap();
        drop(agent.await.unwrap()); // the agent's connections receiver
        let mut closed = false;
        for _ in 0..100 {
            if mux.open().await.is_err() || mux.is_closed() {
                closed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(closed, "the stream did not report its end");
    }
}
