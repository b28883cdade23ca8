use crate::{ExecResult, SandboxState};
use std::time::Duration;

/// Everything the SDK can fail with. Every variant names the sandbox, command or path involved, and the
/// exec variants carry the (partial) result so no output is lost.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) {
/// use std::time::Duration;
/// match sb.exec(["sleep", "10"]).timeout(Duration::from_millis(100)).await {
///     Err(hangar::Error::Timeout { result, .. }) => println!("partial output: {}", result.stdout_text()),
///     Err(e) => eprintln!("{e}"),
///     Ok(r) => println!("exit {}", r.returncode),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No sandbox with this id.
    #[error("sandbox {id} not found")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The sandbox exists but is not running.
    #[error("sandbox {id} is not running (it is {state})")]
    NotRunning {
        /// Sandbox id.
        id: String,
        /// Its state.
        state: SandboxState,
    },
    /// The exec's timeout passed; its whole process tree was killed. `result` holds what it printed.
    #[error("command {command:?} timed out after {timeout:?}")]
    Timeout {
        /// The command.
        command: Vec<String>,
        /// The timeout that passed.
        timeout: Duration,
        /// Output produced before the kill (`returncode` is `-9`).
        result: Box<ExecResult>,
    },
    /// `check(true)` was set and the command exited non-zero.
    #[error("command {command:?} failed with exit code {}: {}", result.returncode, result.stderr_text().trim_end())]
    ExecutionFailed {
        /// The command.
        command: Vec<String>,
        /// Its complete result.
        result: Box<ExecResult>,
    },
    /// The program does not exist in the sandbox or cannot be executed.
    #[error("{message}")]
    CommandNotFound {
        /// What failed, naming the command.
        message: String,
    },
    /// The program exists, but the sandbox had no room to start it: its process limit (pids) is full, say.
    /// Usually passes once other processes end.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) {
    /// if let Err(hangar::Error::StartFailed { message }) = sb.exec(["true"]).await {
    ///     eprintln!("try again later: {message}");
    /// }
    /// # }
    /// ```
    #[error("{message}")]
    StartFailed {
        /// What failed, naming the command.
        message: String,
    },
    /// A file operation failed.
    #[error("{message}")]
    File {
        /// The path inside the sandbox.
        path: String,
        /// What kind of failure.
        kind: FileErrorKind,
        /// Message naming the path.
        message: String,
    },
    /// The sandbox could not be created or started.
    #[error("sandbox failed: {message}")]
    SandboxFailed {
        /// Why, naming the sandbox or image.
        message: String,
    },
    /// The sandbox ended (was stopped, ran out of lifetime, or died) while an operation was in flight.
    #[error("sandbox {id} terminated: {detail}")]
    SandboxTerminated {
        /// Sandbox id.
        id: String,
        /// What was in flight.
        detail: String,
    },
    /// No exec with this id in the sandbox.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) {
    /// match sb.attach("nightly-build").await {
    ///     Err(hangar::Error::ExecNotFound { message }) => eprintln!("{message}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # }
    /// ```
    #[error("{message}")]
    ExecNotFound {
        /// Names the sandbox and the exec.
        message: String,
    },
    /// The exec's output was deleted when its retention passed (see [`crate::Exec::retain`]).
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) {
    /// if let Err(hangar::Error::ExecExpired { message }) = sb.attach("ex-1").await {
    ///     eprintln!("too late: {message}");
    /// }
    /// # }
    /// ```
    #[error("{message}")]
    ExecExpired {
        /// Names the sandbox and the exec.
        message: String,
    },
    /// What arrived does not add up to what the command wrote: bytes were dropped by the journal cap
    /// while no client was attached (or after another client had them: of delivered output the journal keeps
    /// the head and the last 64 MiB), or the totals or checksum in the exec's end do not match. The result
    /// holds what did arrive; `detail` says exactly what is missing.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) {
    /// match sb.exec(["python3", "train.py"]).await {
    ///     Err(hangar::Error::IncompleteOutput { result, detail, .. }) => {
    ///         eprintln!("{detail}; {} bytes of stdout arrived", result.stdout.len())
    ///     }
    ///     other => println!("{other:?}"),
    /// }
    /// # }
    /// ```
    #[error("command {command:?}: incomplete output: {detail}")]
    IncompleteOutput {
        /// The command.
        command: Vec<String>,
        /// What arrived, and how the command ended.
        result: Box<ExecResult>,
        /// What is missing.
        detail: String,
    },
    /// A malformed request; the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server refused the token (or none was given: set `HANGAR_TOKEN`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The server could not be reached, or the connection broke.
    #[error("connection: {0}")]
    Connection(String),
    /// A failure of the engine or host (I/O, store, isolation setup).
    #[error("internal error: {0}")]
    Internal(String),
    /// A local reader or writer the caller handed over failed (the file being uploaded, the one being
    /// downloaded into); the sandbox is fine.
    ///
    /// ```no_run
    /// # async fn demo(sb: &hangar::Sandbox) {
    /// let mut out = tokio::fs::File::create("/full-disk/model.bin").await.unwrap();
    /// if let Err(hangar::Error::LocalIo(m)) = sb.read_file_to("/work/model.bin", &mut out).await {
    ///     eprintln!("{m}");
    /// }
    /// # }
    /// ```
    #[error("local I/O: {0}")]
    LocalIo(String),
}

impl Error {
    /// The error a command that never started stands for: [`Error::CommandNotFound`] when the program is at
    /// fault, [`Error::StartFailed`] when the sandbox had no room for it.
    pub(crate) fn from_start_failure(f: &hangar_types::StartFailure) -> Self {
        let message = f.message.clone();
        match f.kind.is_command_problem() {
            true => Error::CommandNotFound { message },
            false => Error::StartFailed { message },
        }
    }
}

/// What kind of failure an [`Error::File`] is, to tell a missing file from a real error.
///
/// ```no_run
/// # async fn demo(sb: &hangar::Sandbox) -> hangar::Result<()> {
/// let config = match sb.read_file("config.toml").await {
///     Err(hangar::Error::File { kind: hangar::FileErrorKind::NotFound, .. }) => Vec::new(),
///     other => other?,
/// };
/// # Ok(()) }
/// ```
pub use hangar_types::FileErrorKind;

/// Result alias for the SDK.
///
/// ```no_run
/// async fn python_version(sb: &hangar::Sandbox) -> hangar::Result<String> {
///     Ok(sb.exec(["python3", "--version"]).check(true).await?.stdout_text().into_owned())
/// }
/// ```
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(feature = "embedded")]
impl From<hangar_engine::Error> for Error {
    fn from(e: hangar_engine::Error) -> Self {
        use hangar_engine::Error as E;
        match e {
            E::NotFound(id) => Error::NotFound { id },
            E::NotRunning { id, state } => Error::NotRunning { id, state },
            E::InvalidArgument(m) => Error::InvalidArgument(m),
            E::Invalid(i) => Error::InvalidArgument(i.to_string()),
            e @ E::CommandNotFound { .. } => Error::CommandNotFound { message: e.to_string() },
            e @ E::StartFailed { .. } => Error::StartFailed { message: e.to_string() },
            E::File { path, kind, message, .. } => Error::File { path, kind, message },
            E::Image(e) => Error::SandboxFailed { message: e.to_string() },
            e @ E::SandboxFailed { .. } => Error::SandboxFailed { message: e.to_string() },
            E::SandboxGone { id, detail } => Error::SandboxTerminated { id, detail },
            e @ E::ExecNotFound { .. } => Error::ExecNotFound { message: e.to_string() },
            e @ E::ExecExpired { .. } => Error::ExecExpired { message: e.to_string() },
            e @ E::DataSource { .. } => Error::LocalIo(e.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use super::*;
    use hangar_engine::Error as E;

    /// One failure, two backends: the embedded engine's error mapped by the SDK, and the same error sent by a
    /// server as a gRPC status and mapped back, are the same SDK error.
    #[test]
    fn both_backends_raise_the_same_error_for_the_same_failure() {
        let id = || "sb-1".to_string();
        let file = |kind| move || E::File { id: id(), path: "/etc/x".into(), kind, message: "/etc/x: no".into() };
        let mut cases: Vec<Box<dyn Fn() -> E>> = vec![
            Box::new(move || E::NotFound(id())),
            Box::new(move || E::NotRunning { id: id(), state: SandboxState::Terminated }),
            Box::new(|| E::InvalidArgument("argv: the command is empty".into())),
            // (A field with a unit is spelled the API's way: `timeout` embedded, `timeout_ms` over gRPC.)
            Box::new(|| E::Invalid(hangar_types::Invalid::new("argv", "the command is empty"))),
            Box::new(move || E::CommandNotFound { id: id(), message: "command not found: x".into() }),
            Box::new(move || E::StartFailed { id: id(), message: "pids limit".into() }),
            Box::new(move || E::SandboxFailed { id: id(), reason: "no such image".into() }),
            Box::new(move || E::SandboxGone { id: id(), detail: "exec ex-1: agent gone".into() }),
            Box::new(move || E::ExecNotFound { id: id(), exec: "ex-9".into() }),
            Box::new(move || E::ExecExpired { id: id(), exec: "ex-9".into() }),
        ];
        for kind in [
            FileErrorKind::NotFound,
            FileErrorKind::PermissionDenied,
            FileErrorKind::IsADirectory,
            FileErrorKind::NotARegularFile,
            FileErrorKind::NotAllowed,
            FileErrorKind::TooLarge,
            FileErrorKind::NoSpace,
            FileErrorKind::Changed,
            FileErrorKind::Other,
        ] {
            cases.push(Box::new(file(kind)));
        }
        for make in cases {
            let embedded = Error::from(make());
            let remote = crate::remote::status_error("http://127.0.0.1:1", hangar_server::status_of(make()), "sb-1");
            assert_eq!(format!("{embedded:?}"), format!("{remote:?}"), "for {:?}", make());
        }
    }
}
