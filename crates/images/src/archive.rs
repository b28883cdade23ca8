//! Reading an image archive's own structure (`manifest.json`, `index.json`, `oci-layout`, manifests,
//! configs, layer blobs) without trusting the archive.
//!
//! The archive is never unpacked by its own names. It is read once, as a stream: each regular file is
//! copied (bounded, hashed on the way) to a numbered file of our own in the import's work directory, and
//! every other kind of entry (symlink, hard link, device, FIFO, directory) is only remembered as such. A
//! name the import asks for then resolves to its entry in that table, never to a path on the host, so a
//! `manifest.json -> /dev/zero` or a `blobs/sha256/x -> /etc/shadow` in the archive is refused by name
//! instead of being followed. Symlinks *inside* a layer tarball are ordinary image content: layers are
//! unpacked later, by [`crate::unpack_layer`], with its own guards.

use crate::unpack::{decompressed, safe_relative};
use crate::Error;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The most read of `manifest.json`, `index.json`, `oci-layout`, an OCI manifest or an image config: real
/// ones are kilobytes; a bigger one is an attack on memory (they are parsed in memory).
pub(crate) const MAX_JSON_BYTES: u64 = 4 << 20;
/// The most copied of any one archive entry (a layer blob, mostly): generous, but a huge or endless entry
/// stops here instead of filling the disk. A layer whose descriptor declares its size is held to that.
pub(crate) const MAX_BLOB_BYTES: u64 = 64 << 30;
/// The most entries an archive may have: a `docker save` has a few per layer and an OCI layout one per
/// blob, so real archives have hundreds; the table of entries is kept in memory.
const MAX_ENTRIES: usize = 1 << 16;
/// The fixed names of an archive's structure; they are held to [`MAX_JSON_BYTES`] while the archive is
/// read, so an oversized one is refused before it is copied.
const STRUCTURE_FILES: &[&str] = &["manifest.json", "index.json", "oci-layout"];

/// What an archive entry is, as far as import cares.
#[derive(Debug)]
enum Entry {
    /// A regular file, copied to `copy` (a file of our own), with its size and sha256 digest.
    Regular { copy: PathBuf, size: u64, digest: String },
    /// Anything else, by kind (`symlink`, `hard link`, ...): never read.
    Other(&'static str),
}

/// A regular archive entry opened for reading.
#[derive(Debug)]
pub(crate) struct Blob {
    /// The entry's content.
    pub(crate) file: fs::File,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its sha256 digest, `sha256:<hex>`.
    pub(crate) digest: String,
}

/// The entries of one image archive, by their normalised names.
#[derive(Debug)]
pub(crate) struct Archive {
    path: PathBuf,
    entries: HashMap<PathBuf, Entry>,
}

impl Archive {
    /// Reads the archive at `path` (a tar: plain, gzip or zstd) once, copying its regular files into `work`
    /// (an empty directory of the caller's) under names of our own.
    pub(crate) fn scan(path: &Path, work: &Path) -> Result<Self, Error> {
        let what = path.display().to_string();
        let bad = |message: String| Error::Layer { layer: what.clone(), message };
        let file = fs::File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let mut tar = tar::Archive::new(decompressed(file, &what)?);
        let mut entries = HashMap::new();
        let mut buf = vec![0u8; 1 << 20];
        for (n, entry) in tar.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?.enumerate() {
            if n >= MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} entries; not an image archive")));
            }
            let mut entry = entry.map_err(|e| bad(format!("truncated or corrupt: {e}")))?;
            let raw = entry.path().map_err(|e| bad(format!("bad path: {e}")))?.into_owned();
            // Nothing is written by these names, but a name that climbs out is never a valid layout.
            let name = safe_relative(&raw).ok_or_else(|| Error::UnsafeLayer {
                layer: what.clone(),
                message: format!("archive entry {} escapes the archive", raw.display()),
            })?;
            if name.as_os_str().is_empty() {
                continue;
            }
            let kind = match entry.header().entry_type() {
                // A contiguous file is a regular file by another name.
                tar::EntryType::Regular | tar::EntryType::Continuous => None,
                tar::EntryType::Symlink => Some("symlink"),
                tar::EntryType::Link => Some("hard link"),
                tar::EntryType::Directory => Some("directory"),
                tar::EntryType::Char => Some("character device"),
                tar::EntryType::Block => Some("block device"),
                tar::EntryType::Fifo => Some("FIFO"),
                tar::EntryType::GNUSparse => Some("sparse file"),
                _ => Some("special entry"),
            };
            let record = match kind {
                Some(kind) => Entry::Other(kind),
                None => {
                    let limit = if STRUCTURE_FILES.iter().any(|s| name == Path::new(s)) {
                        MAX_JSON_BYTES
                    } else {
                        MAX_BLOB_BYTES
                    };
                    let entry_name = name.display().to_string();
                    let too_large = || Error::ArchiveEntryTooLarge {
                        archive: path.to_path_buf(),
                        entry: entry_name.clone(),
                        limit,
                    };
                    // The header says how much follows; refuse before copying rather than after.
                    if entry.size() > limit {
                        return Err(too_large());
                    }
                    let copy = work.join(n.to_string());
                    let io = |source| Error::Io { path: copy.clone(), source };
                    // create_new: never through whatever might already be at that name.
                    let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&copy).map_err(io)?;
                    let mut hasher = Sha256::new();
                    let mut size = 0u64;
                    // Bounded even though the tar reader stops at the header's size: the bound is ours.
                    let mut content = (&mut entry).take(limit + 1);
                    loop {
                        let got = content.read(&mut buf).map_err(|e| bad(format!("read {entry_name}: {e}")))?;
                        if got == 0 {
                            break;
                        }
                        size += got as u64;
                        if size > limit {
                            return Err(too_large());
                        }
                        hasher.update(&buf[..got]);
                        out.write_all(&buf[..got]).map_err(io)?;
                    }
                    Entry::Regular { copy, size, digest: format!("sha256:{:x}", hasher.finalize()) }
                }
            };
            // A later entry of the same name replaces an earlier one, as it would on unpacking.
            if let Some(Entry::Regular { copy, .. }) = entries.insert(name, record) {
                let _ = fs::remove_file(copy);
            }
        }
        Ok(Self { path: path.to_path_buf(), entries })
    }

    /// Whether the archive has an entry (of any kind) named `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        safe_relative(Path::new(name)).is_some_and(|n| self.entries.contains_key(&n))
    }

    /// Opens the regular entry `name`, refusing one of any other kind or bigger than `limit` bytes. `None`
    /// when there is no such entry.
    pub(crate) fn open(&self, name: &str, limit: u64) -> Result<Option<Blob>, Error> {
        let key = safe_relative(Path::new(name)).ok_or_else(|| Error::UnsafeLayer {
            layer: self.path.display().to_string(),
            message: format!("archive entry {name} escapes the archive"),
        })?;
        let entry_name = key.display().to_string();
        let not_regular = |kind: &str| Error::ArchiveEntryNotRegular {
            archive: self.path.clone(),
            entry: entry_name.clone(),
            kind: kind.to_string(),
        };
        let (copy, size, digest) = match self.entries.get(&key) {
            None => return Ok(None),
            Some(Entry::Other(kind)) => return Err(not_regular(kind)),
            Some(Entry::Regular { copy, size, digest }) => (copy, *size, digest),
        };
        if size > limit {
            return Err(Error::ArchiveEntryTooLarge { archive: self.path.clone(), entry: entry_name, limit });
        }
        // The copy is ours, but it is opened as if it were not: without following a symlink, and checked
        // to be a regular file of the size we wrote through the descriptor we read from (not by path first).
        let io = |source| Error::Io { path: copy.clone(), source };
        let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(copy).map_err(io)?;
        let md = file.metadata().map_err(io)?;
        if !md.is_file() {
            return Err(not_regular("non-regular file"));
        }
        if md.len() != size {
            return Err(Error::Layer {
                layer: self.path.display().to_string(),
                message: format!("archive entry {entry_name} changed while importing"),
            });
        }
        Ok(Some(Blob { file, size, digest: digest.clone() }))
    }

    /// The content of the regular entry `name`, at most `limit` (itself at most [`MAX_JSON_BYTES`]) bytes:
    /// for JSON, which is parsed in memory. `None` when there is no such entry.
    pub(crate) fn read_small(&self, name: &str, limit: u64) -> Result<Option<(Vec<u8>, String)>, Error> {
        let limit = limit.min(MAX_JSON_BYTES);
        let Some(blob) = self.open(name, limit)? else { return Ok(None) };
        let mut bytes = vec![];
        // Bounded again on the read itself: what is read, not what was said, is what counts.
        blob.file
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| Error::Io { path: self.path.clone(), source })?;
        if bytes.len() as u64 > limit {
            let entry = safe_relative(Path::new(name)).unwrap_or_default().display().to_string();
            return Err(Error::ArchiveEntryTooLarge { archive: self.path.clone(), entry, limit });
        }
        Ok(Some((bytes, blob.digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o_nofollow_refuses_a_symlink() {
        // The import's own copies are reopened with O_NOFOLLOW: a symlink in their place is refused.
        let dir = std::env::temp_dir().join(format!("hangar-nofollow-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("target"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        let err = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(dir.join("link")).unwrap_err();
        // ELOOP, 40 on every Linux architecture Hangar builds for.
        assert_eq!(err.raw_os_error(), Some(40), "{err}");
        assert!(fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(dir.join("target")).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
