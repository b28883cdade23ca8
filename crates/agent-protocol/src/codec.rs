//! The one framing of every agent connection (and of the agent's spare exec helpers): each message is a
//! little-endian `u32` length and a JSON body; file and stdin contents follow the frame that announced their
//! length as raw bytes. [`encode`] and [`decode_prefix`] are the format; [`Conn`] and [`Writer`] carry it over
//! a tokio unix stream, and the spare helper over a blocking socket.

use serde::{de::DeserializeOwned, Serialize};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};

/// Frames larger than this are refused: a frame is a small JSON message, never bulk data.
pub const MAX_FRAME: usize = 1 << 20;

/// A nonblocking socket connected to the agent listening at `path`, of no runtime yet. A unix socket's
/// `connect` completes at once or fails (a listener whose backlog is full refuses with `EAGAIN`; there is no
/// connection in progress), so there is nothing to wait for: tokio's `UnixStream::connect` awaits
/// writability all the same, a round trip through the runtime's I/O driver (on a multi-threaded runtime, a
/// wake-up of another thread) on every exec's path.
pub fn connect_socket(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

/// Whether `socket`'s peer is still there, as far as can be told without waiting: nothing to read, and no
/// end of file either.
pub fn peer_is_there(socket: &std::os::unix::net::UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut byte = [0u8; 1];
    let peeked = recv(socket.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT);
    matches!(peeked, Err(nix::errno::Errno::EAGAIN))
}

/// One message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// The message at the start of `buf` and the bytes it took, or `None` while the frame is incomplete.
pub fn decode_prefix<T: DeserializeOwned>(buf: &[u8]) -> io::Result<Option<(T, usize)>> {
    let Some(len) = buf.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) else {
        return Ok(None);
    };
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let Some(body) = buf.get(4..4 + len) else { return Ok(None) };
    let msg = serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, 4 + len)))
}

/// Reads exactly one frame from `stream`, nothing past it: for a stream that something else takes over after
/// its first message (a remote agent's handshake, see `remote`).
pub async fn read_frame<T: DeserializeOwned>(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<T> {
    let mut frame = vec![0u8; 4];
    stream.read_exact(&mut frame).await?;
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    frame.resize(4 + len, 0);
    stream.read_exact(&mut frame[4..]).await?;
    Ok(decode_prefix(&frame)?.expect("a whole frame").0)
}

/// One end of an agent connection: reads frames and writes them. Over a unix socket (the local backend), or
/// over any byte stream ([`Conn::over`]: a port-forward through the Kubernetes API server, say).
pub struct Conn {
    read: Box<dyn AsyncRead + Send + Sync + Unpin>,
    buf: Vec<u8>,
    start: usize,
    writer: Writer,
}

/// A cloneable writing handle on a [`Conn`], for sending while another task reads. Frames from several
/// handles never interleave: each is written whole under the handle's lock. The stream's write side closes
/// once the [`Conn`] and every handle are gone.
#[derive(Clone)]
pub struct Writer {
    write: Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Sync + Unpin>>>,
}

/// What a connection's buffer holds at first: its messages are small; bulk data (file contents, inline
/// output) grows it to [`BULK_READ`].
const FIRST_CAPACITY: usize = 8192;
/// Room made for each read once a read filled the buffer.
const BULK_READ: usize = 64 * 1024;

/// A connected unix stream socket on the runtime, registered for reading only: what it sends goes out
/// directly ([`Writer::send_raw`]), and only a send that finds no room waits for room (see [`SocketWrite`]).
/// tokio's `UnixStream` is registered for writing too, and a socket's room changes with every read its peer
/// makes: each reply read on one side woke the other side's I/O driver for nothing (and its `shutdown` on
/// drop woke its own), two or three wake-ups of a thread per exec, each of which could take the CPU from the
/// agent or the command at the worst moment.
struct Socket(AsyncFd<OwnedFd>);

impl Socket {
    fn new(socket: std::os::unix::net::UnixStream) -> io::Result<Arc<Self>> {
        // SAFETY: the AsyncFd owns the descriptor, so it stays open and means the same socket while registered.
        Ok(Arc::new(Self(unsafe { AsyncFd::register_with_interest(OwnedFd::from(socket), Interest::READABLE) }?)))
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.0.get_ref().as_raw_fd()
    }
}

struct SocketRead(Arc<Socket>);

impl AsyncRead for SocketRead {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0 .0.poll_read_ready(cx))?;
            // SAFETY: `recv` writes at most `unfilled.len()` bytes there, and only those it wrote are marked
            // initialized below.
            let unfilled = unsafe { buf.unfilled_mut() };
            let got = guard.try_io(|fd| {
                // SAFETY: a valid buffer of `unfilled.len()` bytes for the kernel to write into.
                let n =
                    unsafe { libc::recv(fd.get_ref().as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(Ok(n)) => {
                    // SAFETY: `recv` initialized the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The writing side of a [`Socket`]. A send that finds no room registers a duplicate of the socket for
/// writing (the socket itself is registered for reading only) and waits on it; the registration goes with the
/// next flush, which ends every [`Writer::send_raw`]. Dropped, it leaves the socket to close with its last
/// holder: no `shutdown`, which the peer's reading side could not tell from the close that follows.
struct SocketWrite {
    socket: Arc<Socket>,
    writable: Option<AsyncFd<OwnedFd>>,
}

impl AsyncWrite for SocketWrite {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        use nix::sys::socket::{send, MsgFlags};
        loop {
            match send(self.socket.fd(), data, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            if self.writable.is_none() {
                let copy = self.socket.0.get_ref().try_clone()?;
                // SAFETY: as in `Socket::new`, for the duplicate this owns.
                self.writable = Some(unsafe { AsyncFd::register_with_interest(copy, Interest::WRITABLE) }?);
            }
            let writable = self.writable.as_ref().expect("registered above");
            ready!(writable.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writable = None;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(nix::sys::socket::shutdown(self.socket.fd(), nix::sys::socket::Shutdown::Write).map_err(Into::into))
    }
}

impl Conn {
    /// Wraps a connected unix stream socket (nonblocking, see [`connect_socket`]), on the runtime of the
    /// caller.
    pub fn from_socket(socket: std::os::unix::net::UnixStream) -> io::Result<Self> {
        let socket = Socket::new(socket)?;
        let write = SocketWrite { socket: socket.clone(), writable: None };
        Ok(Self::from_halves(Box::new(SocketRead(socket)), Box::new(write)))
    }

    /// Wraps any connected byte stream.
    pub fn over<S: AsyncRead + AsyncWrite + Send + Sync + 'static>(stream: S) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self::from_halves(Box::new(read), Box::new(write))
    }

    fn from_halves(
        read: Box<dyn AsyncRead + Send + Sync + Unpin>,
        write: Box<dyn AsyncWrite + Send + Sync + Unpin>,
    ) -> Self {
        let writer = Writer { write: Arc::new(tokio::sync::Mutex::new(write)) };
        Self { read, buf: Vec::with_capacity(FIRST_CAPACITY), start: 0, writer }
    }

    /// Connects to the agent listening at `path` (see [`connect_socket`]).
    pub async fn connect(path: &std::path::Path) -> io::Result<Self> {
        Self::from_socket(connect_socket(path)?)
    }

    /// A writing handle.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Sends one frame.
    pub async fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        self.writer.send(msg).await
    }

    /// Receives the next frame; `None` on a clean end of stream between frames. Cancel-safe.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        loop {
            if let Some((msg, used)) = decode_prefix(&self.buf[self.start..])? {
                self.start += used;
                return Ok(Some(msg));
            }
            if self.read_more().await? == 0 {
                return match self.buf.len() - self.start {
                    0 => Ok(None),
                    _ => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// Reads exactly `len` raw bytes, handing them to `sink` in pieces as they arrive.
    pub async fn recv_raw(&mut self, mut len: u64, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        while len > 0 {
            if self.start == self.buf.len() && self.read_more().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let avail = (self.buf.len() - self.start).min(len as usize);
            sink(&self.buf[self.start..self.start + avail])?;
            self.start += avail;
            len -= avail as u64;
        }
        Ok(())
    }

    /// Appends what the stream has to the buffer. Cancel-safe (`read_buf` reads nothing unless it returns),
    /// so a `select!` that drops this future mid-wait loses and adds nothing.
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Into the buffer's spare capacity (no zero-filling per read). Grown only once reads fill it: a
        // buffer of 64 KiB for every connection was allocated and freed at the top of the heap with each
        // exec, moving the heap's end (`brk`) both ways every time in the agent.
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve(BULK_READ);
        }
        self.read.read_buf(&mut self.buf).await
    }
}

impl Writer {
    /// Sends one frame.
    pub async fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        self.send_raw(&encode(msg)?).await
    }

    /// Writes raw bytes (file contents after a frame that announced them), whole, under the handle's lock.
    ///
    /// On a unix socket, what the socket has room for is written at once, not after the runtime's I/O driver
    /// reported room (tokio's `UnixStream` waits for that, which a new connection's socket has not had yet: its
    /// first message, an exec's request or its info, waited for a turn of the driver, on a multi-threaded
    /// runtime a wake-up of the driver's thread and then of this one).
    pub async fn send_raw(&self, data: &[u8]) -> io::Result<()> {
        let mut w = self.write.lock().await;
        w.write_all(data).await?;
        w.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, Conn) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        for s in [&a, &b] {
            s.set_nonblocking(true).unwrap();
        }
        (Conn::from_socket(a).unwrap(), Conn::from_socket(b).unwrap())
    }

    #[test]
    fn frames_decode_only_when_whole() {
        let frame = encode(&serde_json::json!({"op": "ping"})).unwrap();
        assert_eq!(&frame[..4], &(frame.len() as u32 - 4).to_le_bytes());
        for cut in 0..frame.len() {
            assert!(decode_prefix::<serde_json::Value>(&frame[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let (v, used) = decode_prefix::<serde_json::Value>(&two).unwrap().unwrap();
        assert_eq!((v, used), (serde_json::json!({"op": "ping"}), frame.len()));
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(decode_prefix::<serde_json::Value>(&huge).is_err());
    }

    #[tokio::test]
    async fn messages_and_raw_bytes_cross_a_socket_in_order() {
        let (a, mut b) = pair();
        let w = a.writer();
        let big = vec![7u8; 300_000];
        let send = async {
            w.send(&1u32).await.unwrap();
            w.send_raw(&big).await.unwrap();
            w.send(&"after").await.unwrap();
            drop(a);
        };
        let recv = async {
            assert_eq!(b.recv::<u32>().await.unwrap(), Some(1));
            let mut got = Vec::new();
            b.recv_raw(big.len() as u64, |c| {
                got.extend_from_slice(c);
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(got, big);
            assert_eq!(b.recv::<String>().await.unwrap().as_deref(), Some("after"));
        };
        tokio::join!(send, recv);
        drop(w);
        assert_eq!(b.recv::<u32>().await.unwrap(), None);
    }

    /// Over any byte stream (here an in-memory pipe smaller than one frame), frames sent by many handles at
    /// once arrive whole, each exactly once.
    #[tokio::test]
    async fn frames_of_concurrent_writers_over_any_stream_never_interleave() {
        let (a, b) = tokio::io::duplex(1024);
        let (a, mut b) = (Conn::over(a), Conn::over(b));
        let sends: Vec<_> = (0..8u32)
            .map(|k| {
                let w = a.writer();
                tokio::spawn(async move {
                    for i in 0..50u32 {
                        w.send(&(k, i, "x".repeat(3000))).await.unwrap();
                    }
                })
            })
            .collect();
        let recv = async {
            let mut next = [0u32; 8];
            for _ in 0..400 {
                let (k, i, pad): (u32, u32, String) = b.recv().await.unwrap().unwrap();
                assert_eq!((i, pad.len()), (next[k as usize], 3000), "writer {k}");
                next[k as usize] += 1;
            }
        };
        recv.await;
        for s in sends {
            s.await.unwrap();
        }
        drop(a);
        assert_eq!(b.recv::<u32>().await.unwrap(), None, "the stream ends once every handle is gone");
    }

    /// A receive abandoned mid-wait (as `select!` does) loses nothing and adds nothing.
    #[tokio::test]
    async fn an_abandoned_receive_leaves_the_stream_intact() {
        let (a, mut b) = pair();
        for _ in 0..3 {
            let idle = tokio::time::timeout(std::time::Duration::from_millis(5), b.recv::<u32>()).await;
            assert!(idle.is_err(), "nothing was sent yet");
        }
        a.send(&42u32).await.unwrap();
        assert_eq!(b.recv::<u32>().await.unwrap(), Some(42));
    }
}
