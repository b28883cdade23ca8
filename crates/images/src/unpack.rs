//! Unpacking one image layer (a tar stream, plain, gzip or zstd — one zstd frame, as OCI layers are written) into a directory that overlayfs can
//! use as a lower layer: OCI whiteouts become overlay whiteouts, opaque markers become the opaque xattr, and
//! no entry may write outside the directory — not through `..`, an absolute path, a symlink planted by an
//! earlier entry, or a hard link to a path outside.

use crate::Error;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks a layer read from `r` into `dest` (which must exist and be empty). `what` names the layer in
/// errors.
pub fn unpack_layer(r: impl Read, dest: &Path, what: &str) -> Result<(), Error> {
    let mut archive = tar::Archive::new(decompressed(r, what)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(|e| layer_err(what, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| layer_err(what, format!("truncated or corrupt: {e}")))?;
        let raw = entry.path().map_err(|e| layer_err(what, format!("bad path: {e}")))?.into_owned();
        let rel =
            safe_relative(&raw).ok_or_else(|| unsafe_err(what, format!("path {} escapes the layer", raw.display())))?;
        let Some(name) = rel.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name == OPAQUE_MARKER || name.starts_with(WHITEOUT_PREFIX) {
            let dir = inside_dir(dest, parent, what)?;
            std::fs::create_dir_all(&dir).map_err(|e| layer_err(what, format!("mkdir {}: {e}", dir.display())))?;
            if name == OPAQUE_MARKER {
                hangar_runtime::overlay::opaque(&dir).map_err(|e| layer_err(what, e.to_string()))?;
            } else {
                hangar_runtime::overlay::whiteout(&dir.join(&name[WHITEOUT_PREFIX.len()..]))
                    .map_err(|e| layer_err(what, e.to_string()))?;
            }
            continue;
        }
        match entry.header().entry_type() {
            // Device nodes are never taken from an image: /dev is the sandbox's own.
            tar::EntryType::Block | tar::EntryType::Char | tar::EntryType::Fifo => continue,
            tar::EntryType::Link => {
                let target = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
                if safe_relative(&target).is_none() {
                    return Err(unsafe_err(what, format!("hard link {} points outside the layer", raw.display())));
                }
            }
            _ => {}
        }
        // unpack_in refuses any entry whose parent, once symlinks are resolved, is outside `dest`.
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(unsafe_err(what, format!("path {} escapes the layer", raw.display()))),
            Err(e) if e.to_string().contains("outside of") => {
                return Err(unsafe_err(
                    what,
                    format!("{} would be written through a symlink outside the layer", raw.display()),
                ))
            }
            Err(e) => {
                return Err(layer_err(
                    what,
                    format!("unpack {}: {e} ({:?})", raw.display(), std::error::Error::source(&e)),
                ))
            }
        }
    }
    Ok(())
}

/// `r` decompressed by its magic bytes: gzip, zstd, or as it is. `what` names the stream in errors.
pub(crate) fn decompressed<'a>(r: impl Read + 'a, what: &str) -> Result<Box<dyn Read + 'a>, Error> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let head = r.fill_buf().map_err(|e| layer_err(what, format!("read: {e}")))?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| layer_err(what, format!("zstd: {e}")))?)
        }
        _ => Box::new(r),
    })
}

/// The entry's path with `.` removed, or `None` if it is absolute or climbs with `..`.
pub(crate) fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `dest/parent`, refusing a parent that resolves (through symlinks already unpacked) outside `dest`.
fn inside_dir(dest: &Path, parent: &Path, what: &str) -> Result<PathBuf, Error> {
    let mut at = dest.to_path_buf();
    for c in parent.components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(unsafe_err(what, format!("whiteout under symlink {}", at.display())));
        }
    }
    Ok(at)
}

fn layer_err(layer: &str, message: String) -> Error {
    Error::Layer { layer: layer.to_string(), message }
}

fn unsafe_err(layer: &str, message: String) -> Error {
    Error::UnsafeLayer { layer: layer.to_string(), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            // Bypass the builder's own path checks: layers come from strangers.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hangar-unpack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn files_whiteouts_and_opaque_dirs() {
        use tar::EntryType::*;
        let d = tmp("ok");
        let layer = tar_of(&[
            ("etc/", Directory, b"", None),
            ("etc/motd", Regular, b"hello\n", None),
            ("etc/.wh.old.conf", Regular, b"", None),
            ("var/cache/.wh..wh..opq", Regular, b"", None),
            ("bin/sh", Symlink, b"", Some("/usr/bin/dash")),
            ("etc/motd.link", Link, b"", Some("etc/motd")),
            ("dev/sda", Block, b"", None),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer).unwrap();
        unpack_layer(&gz.finish().unwrap()[..], &d, "test").unwrap();
        // The same layer zstd-compressed unpacks to the same tree.
        let z = tmp("zstd");
        let zstd = ruzstd::encoding::compress_to_vec(&layer[..], ruzstd::encoding::CompressionLevel::Fastest);
        unpack_layer(&zstd[..], &z, "zstd").unwrap();
        assert_eq!(std::fs::read(z.join("etc/motd")).unwrap(), b"hello\n");
        assert!(std::fs::symlink_metadata(z.join("etc/old.conf")).unwrap().file_type().is_char_device());
        std::fs::remove_dir_all(&z).unwrap();
        assert_eq!(std::fs::read(d.join("etc/motd")).unwrap(), b"hello\n");
        assert_eq!(std::fs::read(d.join("etc/motd.link")).unwrap(), b"hello\n");
        let wh = std::fs::symlink_metadata(d.join("etc/old.conf")).unwrap();
        assert!(wh.file_type().is_char_device(), "whiteout is a 0:0 char device");
        assert_eq!(std::fs::read_link(d.join("bin/sh")).unwrap(), Path::new("/usr/bin/dash"));
        assert!(!d.join("dev/sda").exists(), "device nodes are skipped");
        assert!(hangar_runtime::overlay::is_opaque(&d.join("var/cache")).unwrap(), "opaque marker set");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn escapes_are_refused() {
        use tar::EntryType::*;
        let outside = std::env::temp_dir().join(format!("hangar-unpack-escape-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(&outside).unwrap();
        let evil_link = outside.to_str().unwrap().to_string();
        let cases: Vec<Vec<u8>> = vec![
            tar_of(&[("../escape", Regular, b"x", None)]),
            tar_of(&[("/abs", Regular, b"x", None)]),
            tar_of(&[("a/../../escape", Regular, b"x", None)]),
            tar_of(&[("ln", Symlink, b"", Some(&evil_link)), ("ln/planted", Regular, b"x", None)]),
            tar_of(&[("hl", Link, b"", Some("../../etc/shadow"))]),
        ];
        for (i, layer) in cases.iter().enumerate() {
            let d = tmp(&format!("evil{i}"));
            match unpack_layer(&layer[..], &d, "evil") {
                Err(Error::UnsafeLayer { layer, .. }) => assert_eq!(layer, "evil"),
                other => panic!("case {i}: expected UnsafeLayer, got {other:?}"),
            }
            std::fs::remove_dir_all(&d).unwrap();
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside");
        assert!(!std::env::temp_dir().join("escape").exists());
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
