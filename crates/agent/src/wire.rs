//! Framing on the agent's unix socket: each message is a little-endian `u32` length and a JSON body; file
//! contents follow their announcing frame as raw bytes; pipe descriptors ride along as `SCM_RIGHTS`.

use serde::{de::DeserializeOwned, Serialize};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Frames larger than this are refused: a frame is a small JSON message, never bulk data.
const MAX_FRAME: usize = 1 << 20;
const MAX_FDS: usize = 4;

/// One end of an agent connection: reads frames (collecting any passed descriptors) and writes them.
pub struct Conn {
    stream: Arc<UnixStream>,
    buf: Vec<u8>,
    start: usize,
    scratch: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

/// A cloneable writing handle on a [`Conn`], for sending while another task reads.
#[derive(Clone)]
pub struct Writer {
    stream: Arc<UnixStream>,
}

impl Conn {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream: Arc::new(stream),
            buf: Vec::with_capacity(8192),
            start: 0,
            scratch: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// Connects to the agent listening at `path`.
    pub async fn connect(path: &std::path::Path) -> io::Result<Self> {
        Ok(Self::new(UnixStream::connect(path).await?))
    }

    /// A writing handle.
    pub fn writer(&self) -> Writer {
        Writer { stream: self.stream.clone() }
    }

    /// Sends one frame.
    pub async fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        self.writer().send(msg).await
    }

    /// Receives the next frame; `None` on a clean end of stream between frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        if !self.fill(4).await? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[self.start..self.start + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds {MAX_FRAME}"),
            ));
        }
        if !self.fill(4 + len).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let body = &self.buf[self.start + 4..self.start + 4 + len];
        let msg = serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.start += 4 + len;
        Ok(Some(msg))
    }

    /// Takes the descriptors received so far, in order.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        self.fds.drain(..).collect()
    }

    /// Reads exactly `len` raw bytes, handing them to `sink` in pieces as they arrive.
    pub async fn recv_raw(&mut self, mut len: u64, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        while len > 0 {
            if self.start == self.buf.len() && !self.fill(1).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let avail = (self.buf.len() - self.start).min(len as usize);
            sink(&self.buf[self.start..self.start + avail])?;
            self.start += avail;
            len -= avail as u64;
        }
        Ok(())
    }

    /// Ensures at least `n` unread bytes are buffered; false on end of stream before any byte of them.
    ///
    /// Cancel-safe: bytes are appended to the buffer only in the same synchronous step that receives them,
    /// so a `select!` that drops this future mid-wait loses nothing.
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.start > 0 && self.buf.len() - self.start < n {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.buf.len() - self.start < n {
            let had = self.buf.len() - self.start;
            if self.recvmsg_append().await? == 0 {
                return if had == 0 { Ok(false) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
            }
        }
        Ok(true)
    }

    async fn recvmsg_append(&mut self) -> io::Result<usize> {
        let stream = self.stream.clone();
        if self.scratch.is_empty() {
            self.scratch = vec![0; 64 * 1024];
        }
        loop {
            stream.readable().await?;
            let (scratch, buf, fds) = (&mut self.scratch, &mut self.buf, &mut self.fds);
            let r = stream.try_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(scratch)];
                let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
                let msg = nix::sys::socket::recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors in our table; we own them.
                        fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                Ok(msg.bytes)
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
                Ok(got) => {
                    buf.extend_from_slice(&scratch[..got]);
                    return Ok(got);
                }
            }
        }
    }
}

impl Writer {
    /// Sends one frame.
    pub async fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        self.send_with_fds(msg, &[]).await
    }

    /// Sends one frame with descriptors attached to its first byte.
    pub async fn send_with_fds<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut sent = 0;
        if !raw.is_empty() {
            sent = loop {
                self.stream.writable().await?;
                let r = self.stream.try_io(Interest::WRITABLE, || {
                    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
                    nix::sys::socket::sendmsg::<()>(
                        self.stream.as_raw_fd(),
                        &[IoSlice::new(&frame)],
                        &cmsg,
                        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(io::Error::from)
                });
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => break other?,
                }
            };
        }
        self.send_raw(&frame[sent..]).await
    }

    /// Writes raw bytes (file contents after a frame that announced them).
    pub async fn send_raw(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
