//! The two markers overlayfs reads in a lower layer: whiteouts (a file deleted by this layer) and opaque
//! directories (a directory whose lower contents this layer hides). Image unpacking writes them.

use crate::{Error, Result};
use std::path::Path;

/// Marks `path` as deleted by this layer: a character device 0:0, which is overlayfs's whiteout.
pub fn whiteout(path: &Path) -> Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), nix::sys::stat::makedev(0, 0))
        .map_err(|e| Error::sys("mknod whiteout", path.display(), e))
}

/// Marks directory `dir` as opaque: lower layers' entries in it are hidden.
pub fn opaque(dir: &Path) -> Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .map_err(|_| Error::Unsupported(format!("{} contains a NUL byte", dir.display())))?;
    // SAFETY: both strings are NUL-terminated and live across the call; the value is a 1-byte buffer.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if r != 0 {
        return Err(Error::sys("set opaque xattr on", dir.display(), nix::Error::last()));
    }
    Ok(())
}

/// Whether directory `dir` carries the opaque marker of [`opaque`].
pub fn is_opaque(dir: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .map_err(|_| Error::Unsupported(format!("{} contains a NUL byte", dir.display())))?;
    let mut v = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live across the call; the kernel writes at most `v.len()`
    // bytes into `v`.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    match n {
        n if n >= 0 => Ok(&v[..n as usize] == b"y"),
        _ if nix::Error::last() == nix::Error::ENODATA => Ok(false),
        _ => Err(Error::sys("read opaque xattr of", dir.display(), nix::Error::last())),
    }
}
