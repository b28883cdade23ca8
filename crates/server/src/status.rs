//! Engine errors → gRPC status, once, at this boundary.

use hangar_engine::{Error, FileErrorKind};
use tonic::{Code, Status};

/// Metadata key of the machine-readable reason on every error.
pub const REASON_KEY: &str = "hangar-reason";
/// Metadata key of the failing path on file errors.
pub const PATH_KEY: &str = "hangar-path";

pub(crate) fn with_reason(mut s: Status, reason: &'static str) -> Status {
    s.metadata_mut().insert(REASON_KEY, tonic::metadata::MetadataValue::from_static(reason));
    s
}

pub(crate) fn invalid(field: &str, what: impl std::fmt::Display) -> Status {
    with_reason(Status::invalid_argument(format!("{field}: {what}")), "INVALID_ARGUMENT")
}

/// Metadata key of the sandbox's state on NOT_RUNNING errors.
pub const STATE_KEY: &str = "hangar-state";

pub(crate) fn from_engine(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotFound(_) => with_reason(Status::not_found(msg), "NOT_FOUND"),
        Error::NotRunning { state, .. } => {
            let mut s = with_reason(Status::failed_precondition(msg), "NOT_RUNNING");
            s.metadata_mut().insert(STATE_KEY, tonic::metadata::MetadataValue::from_static(state.as_str()));
            s
        }
        // The message alone, so a client rebuilding the typed error does not repeat its prefix.
        Error::InvalidArgument(m) => with_reason(Status::invalid_argument(m), "INVALID_ARGUMENT"),
        Error::Image(_) => with_reason(Status::failed_precondition(msg), "SANDBOX_FAILED"),
        Error::CommandNotFound { .. } => with_reason(Status::failed_precondition(msg), "COMMAND_NOT_FOUND"),
        Error::StartFailed { .. } => with_reason(Status::resource_exhausted(msg), "START_FAILED"),
        Error::File { kind, path, message, .. } => {
            let code = match kind {
                FileErrorKind::NotFound => Code::NotFound,
                FileErrorKind::PermissionDenied | FileErrorKind::NotAllowed => Code::PermissionDenied,
                FileErrorKind::IsADirectory | FileErrorKind::NotARegularFile => Code::FailedPrecondition,
                FileErrorKind::TooLarge => Code::OutOfRange,
                FileErrorKind::NoSpace => Code::ResourceExhausted,
                FileErrorKind::Other => Code::Internal,
            };
            let mut s = with_reason(Status::new(code, message), kind.reason());
            if let Ok(v) = path.parse() {
                s.metadata_mut().insert(PATH_KEY, v);
            }
            s
        }
        Error::SandboxFailed { .. } => with_reason(Status::failed_precondition(msg), "SANDBOX_FAILED"),
        // The client's upload stream was short (or failed): its request was wrong, not the server.
        Error::DataSource { .. } => with_reason(Status::invalid_argument(msg), "INVALID_ARGUMENT"),
        Error::SandboxGone { detail, .. } => with_reason(Status::aborted(detail), "SANDBOX_GONE"),
        Error::ExecNotFound { .. } => with_reason(Status::not_found(msg), "EXEC_NOT_FOUND"),
        Error::ExecExpired { .. } => with_reason(Status::failed_precondition(msg), "EXEC_EXPIRED"),
        _ => with_reason(Status::internal(msg), "INTERNAL"),
    }
}
