//! Paths a user gives (files to read or write, working directories), resolved strictly inside the sandbox.
//!
//! The agent holds host-side descriptors (its state directory, cgroup directories), and every one of them is
//! nameable through `/proc/self/fd/N` by the agent itself. So no user path is ever opened with a plain
//! `open`: each goes through `openat2` from the sandbox's root with `RESOLVE_IN_ROOT` (`..` and absolute
//! symlinks stay in the root) and `RESOLVE_NO_MAGICLINKS` (no `/proc/*/fd/*`, `/proc/*/cwd`, `/proc/*/root`,
//! `/proc/*/exe`), and the work is then done on the descriptor, never by resolving the path again. Opens never
//! block on a FIFO or a device: they are non-blocking, and anything but a regular file (or a directory where
//! one is asked for) is refused.

use hangar_agent_protocol::ErrorKind;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

/// A refused or failed path operation: the kind (for typed errors) and a message naming the path.
pub(crate) type PathError = (ErrorKind, String);

/// The sandbox's root directory, opened after `pivot_root`, and the default working directory relative paths
/// start from.
pub(crate) struct SandboxRoot {
    root: OwnedFd,
    workdir: String,
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

impl SandboxRoot {
    /// Opens `/` of the calling process (the sandbox's root once the agent has pivoted into it).
    pub(crate) fn open(workdir: &str) -> std::io::Result<Self> {
        let root = nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Self { root, workdir: workdir.to_string() })
    }

    /// `path` as an absolute path inside the sandbox (relative ones start at the working directory).
    fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.workdir.trim_end_matches('/'))
        }
    }

    fn openat2(&self, path: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, nix::Error> {
        // openat2 refuses O_NOCTTY with O_PATH (it has no use there).
        let noctty = if flags.contains(OFlag::O_PATH) { OFlag::empty() } else { OFlag::O_NOCTTY };
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC | noctty).mode(mode).resolve(RESOLVE);
        // EAGAIN: a rename raced with a `..` lookup; the kernel asks us to try again.
        let mut tries = 0;
        loop {
            match openat2(self.root.as_fd(), path, how) {
                Err(nix::Error::EAGAIN) if tries < 16 => tries += 1,
                r => return r,
            }
        }
    }

    /// A directory, as an `O_PATH` descriptor a child can `fchdir` to (a working directory).
    pub(crate) fn open_dir(&self, path: &str) -> Result<OwnedFd, PathError> {
        let abs = self.absolute(path);
        self.openat2(&abs, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).map_err(|e| match e {
            nix::Error::ENOENT => (ErrorKind::NotFound, format!("working directory {abs} does not exist")),
            nix::Error::ENOTDIR => (ErrorKind::NotFound, format!("working directory {abs} is not a directory")),
            e => path_error(&abs, e),
        })
    }

    /// A regular file opened for reading, and its length.
    pub(crate) fn open_read(&self, path: &str) -> Result<(std::fs::File, u64), PathError> {
        let abs = self.absolute(path);
        let fd =
            self.openat2(&abs, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).map_err(|e| path_error(&abs, e))?;
        let len = regular(&fd, &abs)?;
        Ok((std::fs::File::from(fd), len))
    }

    /// A small text file of the image (`/etc/passwd`, say), read whole: `None` when it is missing, not a
    /// regular file, larger than 1 MiB or not UTF-8.
    pub(crate) fn read_small(&self, path: &str) -> Option<String> {
        let (file, len) = self.open_read(path).ok()?;
        if len > 1 << 20 {
            return None;
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, 1 << 20), &mut text).ok()?;
        Some(text)
    }

    /// A regular file opened for writing and emptied (created with `mode`, with its parent directories, when
    /// missing).
    pub(crate) fn open_write(&self, path: &str, mode: u32) -> Result<std::fs::File, PathError> {
        let abs = self.absolute(path);
        if let Some(parent) = Path::new(&abs).parent() {
            self.create_dirs(parent)?;
        }
        // Not O_TRUNC: only a file known to be regular is emptied (a FIFO or device is refused untouched).
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK;
        let fd = self.openat2(&abs, flags, Mode::from_bits_truncate(mode)).map_err(|e| path_error(&abs, e))?;
        regular(&fd, &abs)?;
        let file = std::fs::File::from(fd);
        file.set_len(0).map_err(|e| io_error(&abs, &e))?;
        Ok(file)
    }

    /// `mkdir -p` inside the root: each level is looked up confined, and made with `mkdirat` on its parent's
    /// descriptor when missing.
    fn create_dirs(&self, dir: &Path) -> Result<(), PathError> {
        let mut so_far = String::new();
        for c in dir.components() {
            let Component::Normal(name) = c else { continue };
            let name = name.to_string_lossy();
            let parent = if so_far.is_empty() { "/".to_string() } else { so_far.clone() };
            so_far = format!("{so_far}/{name}");
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
            match self.openat2(&so_far, flags, Mode::empty()) {
                Ok(_) => continue,
                Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(path_error(&so_far, e)),
            }
            let parent_fd = self.openat2(&parent, flags, Mode::empty()).map_err(|e| path_error(&parent, e))?;
            match nix::sys::stat::mkdirat(&parent_fd, name.as_ref(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(path_error(&so_far, e)),
            }
        }
        Ok(())
    }
}

/// The length of `fd` if it is a regular file; a typed refusal otherwise.
fn regular(fd: &OwnedFd, path: &str) -> Result<u64, PathError> {
    let st = fstat(fd).map_err(|e| path_error(path, e))?;
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Ok(st.st_size as u64),
        SFlag::S_IFDIR => Err((ErrorKind::IsADirectory, format!("{path}: is a directory"))),
        t => Err((ErrorKind::NotARegularFile, format!("{path}: is a {}, not a regular file", file_type(t)))),
    }
}

fn file_type(t: SFlag) -> &'static str {
    match t {
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "special file",
    }
}

/// What a failed file operation inside the sandbox means, naming the path: the one mapping from an errno to
/// the kind a client can branch on.
pub(crate) fn path_error(path: &str, e: nix::Error) -> PathError {
    match e {
        nix::Error::ENOENT => (ErrorKind::NotFound, format!("{path}: no such file or directory")),
        nix::Error::EACCES | nix::Error::EPERM => (ErrorKind::PermissionDenied, format!("{path}: permission denied")),
        nix::Error::EISDIR => (ErrorKind::IsADirectory, format!("{path}: is a directory")),
        // A FIFO or socket opened for writing with no reader.
        nix::Error::ENXIO => (ErrorKind::NotARegularFile, format!("{path}: is a FIFO or socket, not a regular file")),
        nix::Error::ELOOP => (
            ErrorKind::NotAllowed,
            format!(
                "{path}: refused: it leads through a /proc link to a process's files or directories (or through \
                 too many symlinks); paths resolve only inside the sandbox"
            ),
        ),
        nix::Error::EXDEV => (ErrorKind::NotAllowed, format!("{path}: refused: it leads outside the sandbox")),
        nix::Error::ENOSPC | nix::Error::EDQUOT => {
            (ErrorKind::NoSpace, format!("{path}: no space left for the sandbox's files"))
        }
        e => (ErrorKind::Other, format!("{path}: {}", e.desc())),
    }
}

/// [`path_error`] for a `std::io::Error`.
pub(crate) fn io_error(path: &str, e: &std::io::Error) -> PathError {
    path_error(path, nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}
