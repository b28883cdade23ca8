use std::path::PathBuf;

/// What went wrong while building or tearing down a sandbox, naming the resource that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed on a named resource (a path, a cgroup, a hostname ...).
    #[error("{op} {resource}: {source}")]
    Sys {
        /// The operation, e.g. `mount overlay`.
        op: &'static str,
        /// The resource it acted on.
        resource: String,
        /// The errno.
        source: nix::Error,
    },
    /// A file operation on the host failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The host lacks something the sandbox needs (a cgroup controller, root privileges ...).
    #[error("unsupported host: {0}")]
    Unsupported(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// Capabilities could not be dropped.
    #[error("capabilities: {0}")]
    Caps(String),
}

impl Error {
    pub(crate) fn sys(op: &'static str, resource: impl std::fmt::Display, source: nix::Error) -> Self {
        Error::Sys { op, resource: resource.to_string(), source }
    }
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
