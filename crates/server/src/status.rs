//! Engine errors → gRPC status, once, at this boundary. The reason codes are the shared
//! [`hangar_types::Reason`]s, in the metadata keys of `hangar_proto::convert`.

use hangar_engine::{Error, FileErrorKind};
use hangar_proto::convert::{PATH_KEY, REASON_KEY, STATE_KEY};
use hangar_types::{Invalid, Reason};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

pub(crate) fn with_reason(mut s: Status, reason: Reason) -> Status {
    s.metadata_mut().insert(REASON_KEY, MetadataValue::from_static(reason.as_str()));
    s
}

pub(crate) fn invalid(field: &str, what: impl std::fmt::Display) -> Status {
    with_reason(Status::invalid_argument(format!("{field}: {what}")), Reason::InvalidArgument)
}

/// A request that breaks a rule, naming the field as the wire spells it.
pub(crate) fn refused(e: Invalid) -> Status {
    invalid(hangar_proto::convert::wire_field(e.field), e.message)
}

pub(crate) fn from_engine(e: Error) -> Status {
    let code = match &e {
        Error::NotFound(_) | Error::ExecNotFound { .. } => Code::NotFound,
        Error::NotRunning { .. }
        | Error::Image(_)
        | Error::CommandNotFound { .. }
        | Error::SandboxFailed { .. }
        | Error::ExecExpired { .. } => Code::FailedPrecondition,
        Error::InvalidArgument(_) | Error::Invalid(_) | Error::DataSource { .. } => Code::InvalidArgument,
        Error::StartFailed { .. } => Code::ResourceExhausted,
        Error::SandboxGone { .. } => Code::Aborted,
        Error::File { kind, .. } => match kind {
            FileErrorKind::NotFound => Code::NotFound,
            FileErrorKind::PermissionDenied | FileErrorKind::NotAllowed => Code::PermissionDenied,
            FileErrorKind::IsADirectory | FileErrorKind::NotARegularFile => Code::FailedPrecondition,
            FileErrorKind::TooLarge => Code::OutOfRange,
            FileErrorKind::NoSpace => Code::ResourceExhausted,
            // A concurrency conflict: reading again may succeed.
            FileErrorKind::Changed => Code::Aborted,
            FileErrorKind::Other => Code::Internal,
        },
        _ => Code::Internal,
    };
    let reason = e.reason();
    let mut extra: Vec<(&'static str, String)> = vec![];
    // The message alone where a client rebuilds the typed error from it, so it does not repeat a prefix.
    let message = match e {
        Error::InvalidArgument(m) => m,
        // The field as this API spells it (`timeout_ms`, not the types' `timeout`).
        Error::Invalid(i) => format!("{}: {}", hangar_proto::convert::wire_field(i.field), i.message),
        Error::SandboxGone { detail, .. } => detail,
        Error::File { path, message, .. } => {
            extra.push((PATH_KEY, path));
            message
        }
        e @ Error::NotRunning { state, .. } => {
            extra.push((STATE_KEY, state.as_str().to_string()));
            e.to_string()
        }
        e => e.to_string(),
    };
    let mut s = with_reason(Status::new(code, message), reason);
    for (key, value) in extra {
        if let Ok(v) = value.parse() {
            s.metadata_mut().insert(key, v);
        }
    }
    s
}
