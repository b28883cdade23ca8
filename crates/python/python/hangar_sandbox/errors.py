"""Everything the SDK raises. Each error names what failed (the sandbox, command, exec or path) and keeps
what there is to keep: an exec that timed out, failed or lost bytes carries its (partial) ``exec_result``.

The names follow the reference SDK (``aviato``) and its successor ``cwsandbox``, so ``except`` clauses
written for them catch the same failures here.

>>> issubclass(SandboxTimeoutError, SandboxError), issubclass(SandboxValidationError, ValueError)
(True, True)
>>> e = SandboxFileError("/etc/x: no such file", filepath="/etc/x", reason="FILE_NOT_FOUND")
>>> (e.filepath, e.reason, str(e))
('/etc/x', 'FILE_NOT_FOUND', '/etc/x: no such file')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._types import ExecResult


class SandboxError(Exception):
    """Base class of every error of the SDK. Extra keyword arguments become attributes.

    >>> SandboxError("boom", sandbox_id="sb-1").sandbox_id
    'sb-1'
    """

    #: The sandbox involved, when one is.
    sandbox_id: str | None = None
    #: A machine-readable reason code, when the failure has one (``FILE_NOT_FOUND``, ...).
    reason: str | None = None
    #: The command involved, when one is.
    command: list[str] | None = None
    #: The command's result so far, for errors that happen to a command.
    exec_result: ExecResult | None = None

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in fields.items():
            setattr(self, name, value)


class SandboxNotFoundError(SandboxError):
    """No sandbox with this id (it never existed, was deleted, or belongs to another tenant)."""


class SandboxNotRunningError(SandboxError):
    """The sandbox exists but is not running; ``status`` says what it is."""

    status: str | None = None


class SandboxFailedError(SandboxError):
    """The sandbox could not be created or started (an unknown image, a bad limit, ...)."""


class SandboxTerminatedError(SandboxError):
    """The sandbox ended (stopped, out of lifetime, or died) while an operation was in flight."""


class SandboxTimeoutError(SandboxError):
    """The command's ``timeout_seconds`` passed: its whole process tree was killed. ``exec_result`` holds
    what it printed before."""

    timeout_seconds: float | None = None


class SandboxExecutionError(SandboxError):
    """``check=True`` was set and the command exited non-zero; ``exec_result`` is its complete result."""


class CommandNotFoundError(SandboxExecutionError):
    """The program does not exist in the sandbox or cannot be executed (``exec_result`` is ``None``)."""


class IncompleteOutputError(SandboxExecutionError):
    """Bytes of the command's output were lost (dropped by the journal cap while nobody was attached, or
    after another client had them: of delivered output the journal keeps the head and at least the last
    64 MiB); ``detail`` says exactly which, ``exec_result`` holds what did arrive."""

    detail: str | None = None


class SandboxResourceExhaustedError(SandboxError):
    """The program exists but the sandbox had no room to start it (its process limit is full, say)."""


class SandboxFileError(SandboxError):
    """A file operation failed; ``filepath`` is the path in the sandbox, ``reason`` the kind of failure
    (``FILE_NOT_FOUND``, ``PERMISSION_DENIED``, ``IS_A_DIRECTORY``, ``PATH_NOT_ALLOWED``, ...)."""

    filepath: str | None = None


class ExecNotFoundError(SandboxError):
    """No exec with this id in the sandbox."""


class ExecExpiredError(SandboxError):
    """The exec's output was deleted when its retention passed."""


class SandboxValidationError(SandboxError, ValueError):
    """A malformed request; the message names the field."""


class SandboxAuthenticationError(SandboxError):
    """The server refused the token (or none was given: set ``HANGAR_TOKEN``)."""


class SandboxConnectionError(SandboxError, ConnectionError):
    """The server could not be reached, or the connection broke."""


class SandboxInternalError(SandboxError):
    """A failure of the engine or host (I/O, store, isolation setup)."""


class LocalIOError(SandboxError, OSError):
    """A local file the caller handed over could not be read or written; the sandbox is fine."""


__all__ = [
    "SandboxError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxFailedError",
    "SandboxTerminatedError",
    "SandboxTimeoutError",
    "SandboxExecutionError",
    "CommandNotFoundError",
    "IncompleteOutputError",
    "SandboxResourceExhaustedError",
    "SandboxFileError",
    "ExecNotFoundError",
    "ExecExpiredError",
    "SandboxValidationError",
    "SandboxAuthenticationError",
    "SandboxConnectionError",
    "SandboxInternalError",
    "LocalIOError",
]
