"""The values the SDK hands back: results, events, sandbox and exec records.

Every one of them is built by the native module from the Rust SDK's own types, in one place
(``crates/python/src/lib.rs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SandboxStatus(StrEnum):
    """Where a sandbox is in its life (the same words as ``cwsandbox.SandboxStatus``).

    >>> SandboxStatus("running") is SandboxStatus.RUNNING
    True
    >>> SandboxStatus.COMPLETED.is_final
    True
    """

    PULLING = "pulling"
    CREATING = "creating"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"

    @property
    def is_final(self) -> bool:
        """Whether the sandbox has ended (completed, failed or terminated)."""
        return self in (SandboxStatus.COMPLETED, SandboxStatus.FAILED, SandboxStatus.TERMINATED)



@dataclass(frozen=True)
class Usage:
    """What a command's whole process tree used (its own cgroup).

    >>> Usage(wall_ms=12, cpu_user_us=3000, cpu_sys_us=1000, peak_memory_bytes=1 << 20).cpu_seconds
    0.004
    """

    wall_ms: int = 0
    cpu_user_us: int = 0
    cpu_sys_us: int = 0
    peak_memory_bytes: int = 0

    @property
    def cpu_seconds(self) -> float:
        """User plus system CPU time, in seconds."""
        return (self.cpu_user_us + self.cpu_sys_us) / 1e6


@dataclass(frozen=True)
class ExecResult:
    """The complete result of a command: its exit code and every byte it wrote, per stream.

    ``returncode`` is ``-N`` when signal N killed the command (as :mod:`subprocess` reports it);
    ``ending`` says how it ended: ``exited``, ``signaled``, ``timed_out``, ``cancelled``, ``oom_killed``,
    ``failed_to_start`` or ``sandbox_gone``.

    >>> r = ExecResult(returncode=0, stdout_bytes=b"hi\\n", stderr_bytes=b"", command=["echo", "hi"])
    >>> (r.returncode, r.stdout, r.success)
    (0, 'hi\\n', True)
    """

    returncode: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    command: list[str] = field(default_factory=list)
    exec_id: str = ""
    ending: str = "exited"
    ending_detail: str | None = None
    usage: Usage = field(default_factory=Usage)

    @property
    def stdout(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """stderr decoded as UTF-8 (invalid bytes replaced)."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def success(self) -> bool:
        """Whether the command exited with code 0."""
        return self.returncode == 0


@dataclass(frozen=True)
class Output:
    """A chunk of output: ``data`` was written to ``stream`` (``"stdout"`` or ``"stderr"``) at byte ``offset``.

    >>> Output(stream="stdout", offset=0, data=b"hi").end
    2
    """

    stream: str
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        """The offset just past this chunk (where to resume from)."""
        return self.offset + len(self.data)


@dataclass(frozen=True)
class Gap:
    """Bytes ``start..end`` of ``stream`` are lost: the journal cap dropped them while no client was attached,
    or they went after another client had them (of delivered output the journal keeps the head and at least
    the last 64 MiB).

    >>> Gap(stream="stdout", start=10, end=30).size
    20
    """

    stream: str
    start: int
    end: int

    @property
    def size(self) -> int:
        """How many bytes are missing."""
        return self.end - self.start


@dataclass(frozen=True)
class Exit:
    """The end of an exec: how it ended, its return code, how many bytes it wrote per stream, what it used.

    >>> Exit(ending="exited", returncode=3, stdout_total=5, stderr_total=0).returncode
    3
    """

    ending: str
    returncode: int
    stdout_total: int = 0
    stderr_total: int = 0
    ending_detail: str | None = None
    usage: Usage = field(default_factory=Usage)


Event = Output | Gap | Exit


@dataclass(frozen=True)
class SandboxLog:
    """A sandbox's log as read by :meth:`Sandbox.logs`: the bytes, what was missing, the main command's end
    (when it had ended and the read got that far) and the offset to read on from.

    >>> log = SandboxLog(data=b"ready\\n", next_offset=6)
    >>> log.text, log.complete
    ('ready\\n', True)
    """

    data: bytes = b""
    gaps: list[Gap] = field(default_factory=list)
    exit: Exit | None = None
    next_offset: int = 0

    @property
    def text(self) -> str:
        """The bytes as text (invalid UTF-8 replaced)."""
        return self.data.decode("utf-8", "replace")

    @property
    def complete(self) -> bool:
        """Whether nothing between the first and the last byte read is missing."""
        return not self.gaps


@dataclass(frozen=True)
class NetworkPolicy:
    """What a sandbox may reach on the network. ``mode="none"``: loopback only. ``mode="egress"``
    (the default of this class): outgoing connections, where an address in ``deny`` (or resolved from a name
    in it) is refused, one in ``allow`` (or resolved from an allowed name) is reached, private, loopback and
    link-local ranges (cloud metadata) are refused, and anything else is reached when ``allow`` is empty and
    refused otherwise. Entries are addresses, CIDR ranges or domain names (``"pypi.org"``,
    ``"*.example.com"``); names are enforced by address through the sandbox's own resolver, and with names in
    ``allow`` other names do not resolve. The host and other sandboxes are never reachable.

    >>> NetworkPolicy(allow=("pypi.org", "10.8.0.0/16")).mode
    'egress'
    """

    mode: str = "egress"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox's record: its status, image, command, tags, limits and how it ended.

    >>> SandboxInfo(id="sb-1", status=SandboxStatus.RUNNING, image="builtin").status.is_final
    False
    """

    id: str
    status: SandboxStatus
    image: str = ""
    command: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    max_lifetime_seconds: float = 0.0
    created_at_ms: int = 0
    ended_at_ms: int | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    end_reason: str | None = None
    error: str | None = None
    progress: str | None = None
    network: NetworkPolicy = field(default_factory=lambda: NetworkPolicy(mode="none"))


@dataclass(frozen=True)
class ExecInfo:
    """An exec's record in its sandbox: running or ended, how much it wrote, who is attached.

    >>> ExecInfo(id="ex-1", command=["true"], running=False, returncode=0).returncode
    0
    """

    id: str
    command: list[str]
    pid: int = 0
    started_at_ms: int = 0
    tty: bool = False
    stdin_open: bool = False
    stdout_written: int = 0
    stderr_written: int = 0
    attached: int = 0
    running: bool = True
    returncode: int | None = None
    expired: bool = False
