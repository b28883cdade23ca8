//! Hangar's image store: OCI images pulled from registries (the distribution API over HTTPS, token auth,
//! mirrors) or imported from `docker save` / OCI-layout archives, kept content-addressed, verified, unpacked
//! once and shared read-only as overlay lower layers; and the built-in image.
//!
//! The built-in image, [`BUILTIN`], is a zero-setup image assembled from the host's own userland, so
//! the first command works on a fresh machine with no registry. It is honestly *not* an OCI image: it is
//! the host's `/usr` (copy-on-write, with `/usr/local` hidden) under a small generated root that carries a
//! whitelisted handful of `/etc` files (dynamic linker cache, alternatives, CA certificates, time zone) and
//! fresh `passwd`/`group` files. Nothing else of the host is in it: no `/root`, `/home`, `/etc/shadow`,
//! ssh keys, `/var` or Hangar's own state.

mod archive;
mod reference;
mod registry;
mod store;
mod unpack;

pub use reference::{Reference, ReferenceError};
pub use registry::RegistryConfig;
pub use store::{ImageConfig, ImageRecord, StoreHold};
pub use unpack::unpack_layer;

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the built-in image; `hangar/builtin` is accepted too.
pub const BUILTIN: &str = "builtin";
/// Bumped whenever the layout of the built-in image's generated layer changes.
const BUILTIN_LAYER: &str = "builtin-v2";

/// `/etc` entries copied from the host into the built-in image: what programs need to run, nothing secret.
const ETC_WHITELIST: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "python3",
    "python3.11",
    "mime.types",
    "protocols",
    "services",
    "debian_version",
    "os-release",
    "bash.bashrc",
    "profile",
    "inputrc",
];

/// Errors of the image store, naming the image or path that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No image by that name is available.
    #[error("unknown image {0:?}: not in the store (pull it from a registry, or `hangar images import FILE`)")]
    UnknownImage(String),
    /// An image could not be pulled from any of its registries; the message lists each attempt.
    #[error("pull {reference}: {message}")]
    Pull {
        /// The full reference.
        reference: String,
        /// What failed, per endpoint tried.
        message: String,
    },
    /// A layer could not be read or unpacked.
    #[error("layer {layer}: {message}")]
    Layer {
        /// Which layer (digest or name).
        layer: String,
        /// What failed.
        message: String,
    },
    /// A layer tried to write outside its directory; nothing of it is kept.
    #[error("unsafe layer {layer}: {message}")]
    UnsafeLayer {
        /// Which layer.
        layer: String,
        /// The offending entry.
        message: String,
    },
    /// Part of an image archive's own structure (`manifest.json`, `index.json`, `oci-layout`, a manifest,
    /// a config or a layer blob) is not a regular file of the archive: a symlink, hard link, device, FIFO or
    /// directory. It is neither followed nor read.
    #[error("image archive {}: archive entry {entry} is a {kind}; only regular files are read", archive.display())]
    ArchiveEntryNotRegular {
        /// The archive being imported.
        archive: PathBuf,
        /// The entry's name inside the archive.
        entry: String,
        /// What it is instead (`symlink`, `hard link`, `directory`, ...).
        kind: String,
    },
    /// An entry of an image archive is larger than import reads for it (see the limits in `archive.rs`).
    #[error("image archive {}: archive entry {entry} is larger than {limit} bytes", archive.display())]
    ArchiveEntryTooLarge {
        /// The archive being imported.
        archive: PathBuf,
        /// The entry's name inside the archive.
        entry: String,
        /// The most that is read for it.
        limit: u64,
    },
    /// Assembling an image on disk failed.
    #[error("image store {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// How to build a sandbox's root from an image: the layers, what to mount over them, and its defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageLayout {
    /// Canonical image name.
    pub name: String,
    /// Read-only lower layers of the root overlay, topmost first.
    pub root_layers: Vec<PathBuf>,
    /// Extra copy-on-write overlays: mount point inside the sandbox and their lower layers, topmost first.
    pub overlays: Vec<(String, Vec<PathBuf>)>,
    /// Default environment.
    pub env: Vec<(String, String)>,
    /// Default working directory.
    pub workdir: String,
    /// Default main command (entrypoint + cmd), used when a sandbox names none.
    pub command: Vec<String>,
    /// User to run as (`name`, `uid`, `name:group` or `uid:gid`, resolved inside the sandbox); root if empty.
    pub user: String,
}

/// The image store under a state directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) root: PathBuf,
    registries: RegistryConfig,
}

impl ImageStore {
    /// An image store rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), registries: RegistryConfig::load(None) }
    }

    /// Uses `registries` (mirrors, insecure registries) for pulls.
    pub fn with_registries(mut self, registries: RegistryConfig) -> Self {
        self.registries = registries;
        self
    }

    /// The registry configuration pulls use.
    pub fn registries(&self) -> &RegistryConfig {
        &self.registries
    }

    /// Resolves an image reference to a layout, assembling the built-in image on first use.
    pub fn resolve(&self, reference: &str) -> Result<ImageLayout, Error> {
        self.resolve_with_progress(reference, |_, _, _| {})
    }

    /// Like [`ImageStore::resolve`], hearing `(layer digest, bytes so far, layer size)` while pulling.
    pub fn resolve_with_progress(
        &self,
        reference: &str,
        progress: impl FnMut(&str, u64, u64),
    ) -> Result<ImageLayout, Error> {
        match reference {
            BUILTIN | "hangar/builtin" | "" => self.builtin(),
            // Like Docker: an image that is not here yet is pulled.
            other => match self.imported(other) {
                Err(Error::UnknownImage(_)) => {
                    self.pull(other, &self.registries, progress)?;
                    self.imported(other)
                }
                found => found,
            },
        }
    }

    /// Whether `reference` can be used without pulling.
    pub fn is_local(&self, reference: &str) -> bool {
        matches!(reference, BUILTIN | "hangar/builtin" | "") || self.imported(reference).is_ok()
    }

    fn builtin(&self) -> Result<ImageLayout, Error> {
        let layer = self.root.join(BUILTIN_LAYER);
        if !layer.exists() {
            self.assemble_builtin(&layer)?;
        }
        Ok(ImageLayout {
            name: BUILTIN.to_string(),
            root_layers: vec![layer.join("root")],
            overlays: vec![("usr".into(), vec![layer.join("usr"), PathBuf::from("/usr")])],
            env: vec![
                ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
                ("HOME".into(), "/root".into()),
                ("LANG".into(), "C.UTF-8".into()),
                // The host's Debian python marks itself externally managed; in a disposable sandbox `pip
                // install` into the system is exactly what users want.
                ("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into()),
            ],
            workdir: "/".into(),
            command: vec!["sleep".into(), "infinity".into()],
            user: String::new(),
        })
    }

    /// Builds the generated layer in a temporary directory and renames it into place, so a concurrent
    /// builder or a crash never leaves a half-made layer behind.
    fn assemble_builtin(&self, layer: &Path) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let n = unique();
        let tmp = self.root.join(format!(".{BUILTIN_LAYER}.{}.{n}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let root = tmp.join("root");
        for d in [
            "usr", "etc", "tmp", "root", "home", "var/tmp", "var/log", "proc", "sys", "dev", "run", "mnt", "opt", "srv",
        ] {
            fs::create_dir_all(root.join(d)).map_err(io(&root.join(d)))?;
        }
        for d in ["tmp", "var/tmp"] {
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o1777)).map_err(io(&root.join(d)))?;
        }
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            if Path::new("/usr").join(top).exists() {
                symlink(format!("usr/{top}"), root.join(top)).map_err(io(&root.join(top)))?;
            }
        }
        for name in ETC_WHITELIST {
            let from = Path::new("/etc").join(name);
            if fs::symlink_metadata(&from).is_ok() {
                copy_tree(&from, &root.join("etc").join(name)).map_err(io(&from))?;
            }
        }
        let etc = root.join("etc");
        let generated = [
            ("passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
            ("group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
            ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
            ("hangar-image", "builtin: the host's /usr (copy-on-write, /usr/local hidden) and a generated /etc\n"),
        ];
        for (name, body) in generated {
            fs::write(etc.join(name), body).map_err(io(&etc.join(name)))?;
        }
        // Many scripts say `python`; Debian ships only `python3` unless python-is-python3 is installed.
        let usr_bin = tmp.join("usr/bin");
        fs::create_dir_all(&usr_bin).map_err(io(&usr_bin))?;
        if !Path::new("/usr/bin/python").exists() && Path::new("/usr/bin/python3").exists() {
            symlink("python3", usr_bin.join("python")).map_err(io(&usr_bin))?;
        }
        // The host's /usr/local is hidden by an opaque directory over it (the sandbox's own writes land in its
        // /usr overlay's upper layer), not by a tmpfs: every filesystem instance costs each idle sandbox kernel
        // memory (see `hangar_runtime::cgroups`).
        let local = tmp.join("usr/local");
        fs::create_dir_all(&local).map_err(io(&local))?;
        set_opaque(&local).map_err(io(&local))?;
        match fs::rename(&tmp, layer) {
            Ok(()) => Ok(()),
            // Another process finished first: use its copy.
            Err(_) if layer.exists() => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(Error::Io { path: layer.to_path_buf(), source: e }),
        }
    }
}

/// Marks `dir`, in a lower layer of an overlay, opaque: the layers below it contribute nothing to it.
fn set_opaque(dir: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the value is one byte long.
    let r = unsafe { libc::setxattr(path.as_ptr(), c"trusted.overlay.opaque".as_ptr(), c"y".as_ptr().cast(), 1, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A number unique within this process, for temporary names.
pub(crate) fn unique() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Copies a file, symlink (as a symlink) or directory tree.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(from)?;
    if md.file_type().is_symlink() {
        symlink(fs::read_link(from)?, to)
    } else if md.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if md.is_file() {
        fs::copy(from, to).map(|_| ())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_image_has_no_host_secrets_and_rejects_unknown_names() {
        let dir = std::env::temp_dir().join(format!("hangar-images-test-{}", std::process::id()));
        let store = ImageStore::new(&dir);
        let layout = store.resolve(BUILTIN).expect("builtin image");
        let root = &layout.root_layers[0];
        assert!(root.join("etc/passwd").is_file());
        for secret in ["etc/shadow", "etc/gshadow", "etc/ssh", "root/.ssh", "home/.ssh"] {
            assert!(!root.join(secret).exists(), "{secret} must not be in the built-in image");
        }
        assert_eq!(fs::read_to_string(root.join("etc/passwd")).unwrap().lines().count(), 2);
        // Not here, so it is pulled; the registry (on loopback, nothing listening) is a clear error.
        match store.resolve("127.0.0.1:9/team/python:3.11") {
            Err(Error::Pull { reference, message }) => {
                assert_eq!(reference, "127.0.0.1:9/team/python:3.11");
                assert!(message.contains("https://127.0.0.1:9"), "{message}");
            }
            other => panic!("expected a pull error, got {other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
