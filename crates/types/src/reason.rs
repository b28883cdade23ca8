//! Machine-readable reasons for failures, shared by every API so that a server and a client cannot disagree.

/// Kinds of file failure, so callers can branch without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileErrorKind {
    /// No such file or directory.
    NotFound,
    /// Permission denied.
    PermissionDenied,
    /// The path is a directory.
    IsADirectory,
    /// The path is a FIFO, socket or device: only regular files are read or written.
    NotARegularFile,
    /// The path leads outside the sandbox (through a `/proc` link to a process's files): refused.
    NotAllowed,
    /// The file is larger than the transfer limit.
    TooLarge,
    /// No space left for the sandbox's files (the disk that holds them is full).
    NoSpace,
    /// The file shrank (was truncated or cut short) while it was read, so its announced length could not be
    /// delivered; reading it again reads what it holds now.
    Changed,
    /// Anything else.
    Other,
}

/// Why a request failed, as one code that travels with the error over every API (gRPC metadata
/// `hangar-reason`, the Python SDK's exception classes). Each code's text is fixed once here.
///
/// ```
/// use hangar_types::{FileErrorKind, Reason};
/// assert_eq!(Reason::File(FileErrorKind::NotFound).as_str(), "FILE_NOT_FOUND");
/// assert_eq!(Reason::parse("EXEC_EXPIRED"), Some(Reason::ExecExpired));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No sandbox with this id (or not the caller's).
    NotFound,
    /// The sandbox exists but is not running.
    NotRunning,
    /// The request breaks a rule; the message names the field.
    InvalidArgument,
    /// The program does not exist or cannot be run.
    CommandNotFound,
    /// The program exists, but the sandbox had no room to start it.
    StartFailed,
    /// The sandbox could not be created or started (its image, say).
    SandboxFailed,
    /// The sandbox ended while the operation was in flight.
    SandboxGone,
    /// No exec with this id.
    ExecNotFound,
    /// The exec's output was deleted when its retention passed.
    ExecExpired,
    /// The caller's token was refused.
    Unauthenticated,
    /// A file operation failed.
    File(FileErrorKind),
    /// A failure of the engine or host.
    Internal,
}

impl Reason {
    const ALL: [(Reason, &'static str); 20] = [
        (Reason::NotFound, "NOT_FOUND"),
        (Reason::NotRunning, "NOT_RUNNING"),
        (Reason::InvalidArgument, "INVALID_ARGUMENT"),
        (Reason::CommandNotFound, "COMMAND_NOT_FOUND"),
        (Reason::StartFailed, "START_FAILED"),
        (Reason::SandboxFailed, "SANDBOX_FAILED"),
        (Reason::SandboxGone, "SANDBOX_GONE"),
        (Reason::ExecNotFound, "EXEC_NOT_FOUND"),
        (Reason::ExecExpired, "EXEC_EXPIRED"),
        (Reason::Unauthenticated, "UNAUTHENTICATED"),
        (Reason::Internal, "INTERNAL"),
        (Reason::File(FileErrorKind::NotFound), "FILE_NOT_FOUND"),
        (Reason::File(FileErrorKind::PermissionDenied), "PERMISSION_DENIED"),
        (Reason::File(FileErrorKind::IsADirectory), "IS_A_DIRECTORY"),
        (Reason::File(FileErrorKind::NotARegularFile), "NOT_A_REGULAR_FILE"),
        (Reason::File(FileErrorKind::NotAllowed), "PATH_NOT_ALLOWED"),
        (Reason::File(FileErrorKind::TooLarge), "FILE_TOO_LARGE"),
        (Reason::File(FileErrorKind::NoSpace), "NO_SPACE"),
        (Reason::File(FileErrorKind::Changed), "FILE_CHANGED"),
        (Reason::File(FileErrorKind::Other), "FILE_ERROR"),
    ];

    /// The code's text.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(r, _)| *r == self).map_or("INTERNAL", |(_, s)| s)
    }

    /// The reason a code's text stands for.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, t)| *t == s).map(|(r, _)| *r)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_one_distinct_code_that_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for (r, s) in Reason::ALL {
            assert!(seen.insert(s), "{s} twice");
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("NOPE"), None);
    }
}
