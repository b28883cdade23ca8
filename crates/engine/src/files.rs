//! Files in and out of a running sandbox, streamed in chunks: memory stays at one chunk whatever the size,
//! and the size limit ([`crate::EngineConfig::max_file_bytes`]) holds both ways. The agent resolves the path
//! inside the sandbox (see the agent's `confined` module); this side moves bytes.

use crate::{Engine, Error, FileErrorKind, Result};
use hangar_agent_protocol::codec::Conn;
use hangar_agent_protocol::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The transfer limit unless configured: 16 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 30;
/// Bytes moved per step.
const CHUNK: u64 = 256 << 10;

/// A file being read out of a sandbox: its length, then its bytes chunk by chunk.
pub struct FileDownload {
    sandbox: String,
    path: String,
    conn: Conn,
    len: u64,
    left: u64,
    /// Whether the agent sends the bytes in chunks that say their length (protocol 4 on), ended by `Done` or
    /// an error; before, `len` raw bytes followed.
    framed: bool,
    done: bool,
}

impl FileDownload {
    /// The file's length in bytes (what the chunks add up to).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next chunk (at most 256 KiB), or `None` once all `len` bytes were given. A file that shrank while it
    /// was read fails the next chunk with [`FileErrorKind::Changed`] (one that failed, with its failure).
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let want = match self.framed {
            false if self.left == 0 => 0,
            false => self.left.min(CHUNK),
            true => match self.conn.recv::<Response>().await {
                // (A chunk is never empty: an empty one would end the read with bytes missing.)
                Ok(Some(Response::FileChunk { len })) if (1..=self.left).contains(&len) => len,
                Ok(Some(Response::Done)) if self.left == 0 => 0,
                Ok(Some(Response::Error { kind, message })) => {
                    self.done = true;
                    return Err(crate::backend::agent_error(&self.sandbox, &self.path, kind, message));
                }
                Ok(other) => return Err(self.gone(format!("unexpected {other:?} with {} bytes to come", self.left))),
                Err(e) => return Err(self.gone(format!("the sandbox went away: {e}"))),
            },
        };
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let mut chunk = Vec::with_capacity(want as usize);
        self.conn
            .recv_raw(want, |c| {
                chunk.extend_from_slice(c);
                Ok(())
            })
            .await
            .map_err(|e| self.gone(format!("the file ended early or the sandbox went away: {e}")))?;
        self.left -= want;
        Ok(Some(chunk))
    }

    fn gone(&self, detail: String) -> Error {
        Error::SandboxGone { id: self.sandbox.clone(), detail: format!("read_file {}: {detail}", self.path) }
    }
}

fn too_large(id: &str, path: &str, len: u64, limit: u64) -> Error {
    Error::File {
        id: id.to_string(),
        path: path.to_string(),
        kind: FileErrorKind::TooLarge,
        message: format!("{path}: {len} bytes exceeds the {limit}-byte transfer limit"),
    }
}

fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::InvalidArgument("path is empty".into()));
    }
    if path.contains('\0') {
        return Err(Error::InvalidArgument(format!("path {path:?} contains a NUL byte")));
    }
    Ok(())
}

impl Engine {
    /// Opens a regular file inside a running sandbox for reading. Paths resolve inside the sandbox's own
    /// root, so `..`, symlinks and `/proc` links cannot reach the host; FIFOs, sockets and devices are refused.
    pub async fn open_file(&self, id: &str, path: &str) -> Result<FileDownload> {
        check_path(path)?;
        let crate::backend::AgentLink { mut conn, protocol, ahead, .. } = self.link(id).await?;
        conn.send(&Request::ReadFile { path: path.to_string() }).await.map_err(|e| self.gone(id, "read_file", e))?;
        drop(ahead);
        match conn.recv::<Response>().await.map_err(|e| self.gone(id, "read_file", e))? {
            Some(Response::FileData { len }) if len > self.config().max_file_bytes => {
                Err(too_large(id, path, len, self.config().max_file_bytes))
            }
            Some(Response::FileData { len }) => {
                let (sandbox, path) = (id.to_string(), path.to_string());
                Ok(FileDownload { sandbox, path, conn, len, left: len, framed: protocol >= 4, done: false })
            }
            other => Err(self.unexpected(id, path, other)),
        }
    }

    /// Reads a whole file from inside a running sandbox into memory (see [`Engine::open_file`]).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        let mut f = self.open_file(id, path).await?;
        let mut data = Vec::with_capacity(f.len().min(64 << 20) as usize);
        while let Some(chunk) = f.next_chunk().await? {
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// Writes `len` bytes read from `source` to a file inside a running sandbox (created with `mode` and its
    /// parent directories when missing, emptied first). A source that ends before `len` bytes fails the write.
    pub async fn write_file_from(
        &self,
        id: &str,
        path: &str,
        len: u64,
        mode: u32,
        source: &mut (impl AsyncRead + Unpin),
    ) -> Result<()> {
        check_path(path)?;
        let limit = self.config().max_file_bytes;
        if len > limit {
            return Err(too_large(id, path, len, limit));
        }
        let mut conn = self.connect(id).await?;
        let w = conn.writer();
        let data_err = |message: String| Error::DataSource { path: path.to_string(), message };
        let gone = |e: std::io::Error| self.gone(id, &format!("write_file {path}"), e);
        w.send(&Request::WriteFile { path: path.to_string(), len, mode }).await.map_err(gone)?;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut left = len;
        while left > 0 {
            let want = left.min(CHUNK) as usize;
            // Closing the connection early tells the agent the upload ended; the cause is the data's.
            let n = source.read(&mut buf[..want]).await.map_err(|e| data_err(format!("reading the data: {e}")))?;
            if n == 0 {
                return Err(data_err(format!("the data ended after {} of {len} bytes", len - left)));
            }
            w.send_raw(&buf[..n]).await.map_err(gone)?;
            left -= n as u64;
        }
        match conn.recv::<Response>().await {
            Ok(Some(Response::Done)) => Ok(()),
            Ok(other) => Err(self.unexpected(id, path, other)),
            Err(e) => Err(self.gone(id, &format!("write_file {path}"), e)),
        }
    }

    /// Writes a whole file inside a running sandbox (see [`Engine::write_file_from`]).
    pub async fn write_file(&self, id: &str, path: &str, data: &[u8], mode: u32) -> Result<()> {
        self.write_file_from(id, path, data.len() as u64, mode, &mut &data[..]).await
    }
}
