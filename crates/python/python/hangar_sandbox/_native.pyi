# Type stubs of the native module (crates/python/src/lib.rs): the Rust SDK, bound with PyO3.
from collections.abc import Awaitable
from typing import Literal, overload

from ._types import Event, ExecInfo, ExecResult, SandboxInfo

class NativeClient:
    @staticmethod
    def from_env() -> NativeClient: ...
    @staticmethod
    def connect(url: str, token: str | None = None) -> NativeClient: ...
    @staticmethod
    def embedded(state_dir: str) -> NativeClient: ...
    def create(
        self,
        *,
        image: str | None = None,
        command: str | None = None,
        args: list[str] = ...,
        env: list[tuple[str, str]] = ...,
        tags: list[tuple[str, str]] = ...,
        workdir: str | None = None,
        cpus: float | None = None,
        memory_bytes: int | None = None,
        disk_bytes: int | None = None,
        pids: int | None = None,
        max_lifetime_seconds: float | None = None,
        request_id: str | None = None,
        image_command: bool = False,
        network: tuple[str, list[str], list[str]] | None = None,
    ) -> Awaitable[NativeSandbox]: ...
    def get(self, id: str) -> Awaitable[NativeSandbox]: ...
    def list(self) -> Awaitable[list[tuple[NativeSandbox, SandboxInfo]]]: ...

class NativeSandbox:
    @property
    def id(self) -> str: ...
    def info(self) -> Awaitable[SandboxInfo]: ...
    @overload
    def exec(
        self,
        argv: list[str],
        *,
        events: Literal[False] = False,
        env: list[tuple[str, str]] = ...,
        cwd: str | None = None,
        timeout_seconds: float | None = None,
        stdin: bytes | None = None,
        open_stdin: bool = False,
        id: str | None = None,
        tty: tuple[int, int] | None = None,
        merged: bool = False,
        check: bool = False,
        capture: bool = True,
        kill_on_disconnect_ms: int | None = None,
    ) -> Awaitable[ExecResult]: ...
    @overload
    def exec(
        self,
        argv: list[str],
        *,
        events: Literal[True],
        env: list[tuple[str, str]] = ...,
        cwd: str | None = None,
        timeout_seconds: float | None = None,
        stdin: bytes | None = None,
        open_stdin: bool = False,
        id: str | None = None,
        tty: tuple[int, int] | None = None,
        merged: bool = False,
        check: bool = False,
        capture: bool = True,
        kill_on_disconnect_ms: int | None = None,
    ) -> Awaitable[NativeRun]: ...
    @overload
    def exec(
        self,
        argv: list[str],
        *,
        events: bool,
        env: list[tuple[str, str]] = ...,
        cwd: str | None = None,
        timeout_seconds: float | None = None,
        stdin: bytes | None = None,
        open_stdin: bool = False,
        id: str | None = None,
        tty: tuple[int, int] | None = None,
        merged: bool = False,
        check: bool = False,
        capture: bool = True,
        kill_on_disconnect_ms: int | None = None,
    ) -> Awaitable[ExecResult | NativeRun]: ...
    def attach(
        self, exec_id: str, stdout_offset: int = 0, stderr_offset: int = 0, capture: bool = True
    ) -> Awaitable[NativeRun]: ...
    def logs(
        self,
        *,
        follow: bool = False,
        from_offset: int = 0,
        tail_lines: int | None = None,
        since_seconds: float | None = None,
    ) -> Awaitable[NativeLog]: ...
    def execs(self) -> Awaitable[list[ExecInfo]]: ...
    def read_file(self, path: str) -> Awaitable[bytes]: ...
    def write_file(self, path: str, data: bytes | None) -> Awaitable[None]: ...
    def stop(self, grace_seconds: float | None = None) -> Awaitable[SandboxInfo]: ...
    def publish_port(self, port: int) -> Awaitable[str]: ...
    def set_network(self, mode: str, allow: list[str], deny: list[str]) -> Awaitable[SandboxInfo]: ...
    def delete(self) -> Awaitable[None]: ...

class NativeRun:
    id: str
    sandbox_id: str
    command: list[str]
    def next_batch(self, max_bytes: int = ...) -> Awaitable[list[Event] | None]: ...
    def result(self) -> Awaitable[ExecResult]: ...
    def keep(self) -> None: ...
    def signal(self, signal: int) -> Awaitable[None]: ...
    def write_stdin(self, data: bytes | None) -> Awaitable[None]: ...
    def close_stdin(self) -> Awaitable[None]: ...
    def resize(self, rows: int, cols: int) -> Awaitable[None]: ...

class NativeLog:
    start: int
    def next_batch(self, max_bytes: int = ...) -> Awaitable[list[Event] | None]: ...
    def finish(self) -> Awaitable[None]: ...

class LineBuffer:
    def __init__(self) -> None: ...
    def push(self, data: bytes) -> list[str]: ...
    def finish(self) -> str | None: ...

def parse_cpus(field: str, quantity: str) -> float: ...
def parse_bytes(field: str, quantity: str) -> int: ...
