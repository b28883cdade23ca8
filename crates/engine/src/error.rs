use crate::{FileErrorKind, Reason};

/// Everything that can go wrong in the engine, each naming the sandbox, path or command involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No sandbox with this id.
    #[error("sandbox {0} not found")]
    NotFound(String),
    /// The sandbox exists but is not running.
    #[error("sandbox {id} is not running (it is {state})")]
    NotRunning {
        /// Sandbox id.
        id: String,
        /// Its current state.
        state: crate::SandboxState,
    },
    /// A request was malformed; the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request broke one of the shared rules (`hangar_types` validation); names the field, so that each API
    /// can spell it its own way.
    #[error("invalid argument: {0}")]
    Invalid(hangar_types::Invalid),
    /// The image cannot be resolved.
    #[error(transparent)]
    Image(#[from] hangar_images::Error),
    /// The program of an exec (or of the sandbox) does not exist or cannot be run.
    #[error("sandbox {id}: {message}")]
    CommandNotFound {
        /// Sandbox id.
        id: String,
        /// What the agent said, naming the command.
        message: String,
    },
    /// The program exists but its process could not be started (the sandbox's pids limit is full, say).
    #[error("sandbox {id}: {message}")]
    StartFailed {
        /// Sandbox id.
        id: String,
        /// What the agent said, naming the command.
        message: String,
    },
    /// No exec with this id in the sandbox.
    #[error("sandbox {id}: exec {exec} not found")]
    ExecNotFound {
        /// Sandbox id.
        id: String,
        /// Exec id.
        exec: String,
    },
    /// The exec's output was deleted when its retention passed.
    #[error("sandbox {id}: exec {exec}: its output expired (retention passed)")]
    ExecExpired {
        /// Sandbox id.
        id: String,
        /// Exec id.
        exec: String,
    },
    /// A file operation failed inside the sandbox.
    #[error("sandbox {id}: {message}")]
    File {
        /// Sandbox id.
        id: String,
        /// The path inside the sandbox.
        path: String,
        /// What kind of failure.
        kind: FileErrorKind,
        /// What the agent said.
        message: String,
    },
    /// The sandbox could not be started.
    #[error("sandbox {id} failed to start: {reason}")]
    SandboxFailed {
        /// Sandbox id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The sandbox ended while an operation on it was in flight.
    #[error("sandbox {id} ended during the operation ({detail})")]
    SandboxGone {
        /// Sandbox id.
        id: String,
        /// What was in flight.
        detail: String,
    },
    /// Isolation setup or teardown failed on the host.
    #[error(transparent)]
    Runtime(#[from] hangar_runtime::Error),
    /// The sandbox's agent speaks a protocol version this engine does not.
    #[error("sandbox {id}: its agent speaks protocol version {version}; this engine speaks {min} to {max} (stop and recreate the sandbox, or use a matching engine)")]
    AgentVersion {
        /// Sandbox id.
        id: String,
        /// The agent's version.
        version: u32,
        /// Oldest version this engine speaks.
        min: u32,
        /// Newest version this engine speaks.
        max: u32,
    },
    /// A bug or an impossible state in the engine itself (a task that panicked, say).
    #[error("internal error: {0}")]
    Internal(String),
    /// The sandbox store failed.
    #[error("sandbox store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A host file or socket operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path or resource.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The data given for a file write failed or ended before its announced length (the caller's reader,
    /// or a client's upload stream); the sandbox is fine.
    #[error("write_file {path}: {message}")]
    DataSource {
        /// The path inside the sandbox.
        path: String,
        /// What went wrong with the data.
        message: String,
    },
    /// The agent answered something unexpected.
    #[error("sandbox {id}: agent protocol error: {message}")]
    Agent {
        /// Sandbox id.
        id: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// The error an exec of sandbox `id` that ended with `ending` stands for, when it never started:
    /// [`Error::CommandNotFound`] for a missing or non-executable program, else [`Error::StartFailed`].
    pub fn from_start_failure(id: &str, ending: &crate::Ending) -> Option<Self> {
        let crate::Ending::FailedToStart(f) = ending else { return None };
        let (id, message) = (id.to_string(), f.message.clone());
        Some(match f.kind.is_command_problem() {
            true => Error::CommandNotFound { id, message },
            false => Error::StartFailed { id, message },
        })
    }

    /// The reason code this error travels as over every API.
    pub fn reason(&self) -> Reason {
        match self {
            Error::NotFound(_) => Reason::NotFound,
            Error::NotRunning { .. } => Reason::NotRunning,
            Error::InvalidArgument(_) | Error::Invalid(_) | Error::DataSource { .. } => Reason::InvalidArgument,
            Error::Image(_) | Error::SandboxFailed { .. } => Reason::SandboxFailed,
            Error::CommandNotFound { .. } => Reason::CommandNotFound,
            Error::StartFailed { .. } => Reason::StartFailed,
            Error::ExecNotFound { .. } => Reason::ExecNotFound,
            Error::ExecExpired { .. } => Reason::ExecExpired,
            Error::File { kind, .. } => Reason::File(*kind),
            Error::SandboxGone { .. } => Reason::SandboxGone,
            Error::Runtime(_)
            | Error::AgentVersion { .. }
            | Error::Internal(_)
            | Error::Store(_)
            | Error::Io { .. }
            | Error::Agent { .. } => Reason::Internal,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io { op, path: path.to_string(), source }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<hangar_types::Invalid> for Error {
    fn from(e: hangar_types::Invalid) -> Self {
        Error::Invalid(e)
    }
}
