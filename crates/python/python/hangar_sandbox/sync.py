"""The same API without asyncio, for scripts: every call runs the async API on one event loop in a
background thread and waits for it. Ctrl-C while waiting kills the running exec (and leaving a ``with``
block stops its sandbox) before ``KeyboardInterrupt`` reaches you.

.. code-block:: python

    from hangar_sandbox.sync import Sandbox

    with Sandbox(command="sleep", args=["infinity"]) as sb:
        r = sb.exec(["python3", "-c", "print('hi')"], stream_output=True, check=True)
        print(r.returncode)

Callbacks run as in the async API: plain functions in a thread of their exec's own, in order.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import threading
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from . import _sandbox
from ._sandbox import Client
from ._types import Event, ExecInfo, ExecResult, SandboxInfo, SandboxLog, SandboxStatus

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="hangar-sync-loop", daemon=True).start()
            _loop = loop
        return _loop


def _wait(aw: Awaitable[T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if asyncio.iscoroutine(aw):
            aw.close()
        raise RuntimeError("hangar_sandbox.sync cannot be used inside a running event loop: use hangar_sandbox.Sandbox")

    async def call() -> T:
        return await aw

    loop = _get_loop()
    fut = asyncio.run_coroutine_threadsafe(call(), loop)
    try:
        return fut.result()
    except KeyboardInterrupt:
        # Cancel the call (an exec kills its tree on cancellation) and let its cleanup finish.
        loop.call_soon_threadsafe(fut.cancel)
        concurrent.futures.wait([fut], timeout=30)
        raise


class ExecHandle:
    """A started exec (see :class:`hangar_sandbox.ExecHandle`), iterated with a plain ``for``."""

    def __init__(self, inner: _sandbox.ExecHandle) -> None:
        self._inner = inner

    @property
    def id(self) -> str:
        """The exec's id.

        >>> with Sandbox() as sb:
        ...     sb.start_exec(["true"], id="sync-1").id
        'sync-1'
        """
        return self._inner.id

    @property
    def position(self) -> tuple[int, int]:
        """Bytes of (stdout, stderr) received so far.

        >>> with Sandbox() as sb:
        ...     h = sb.start_exec(["printf", "abc"])
        ...     _ = list(h)
        ...     h.position
        (3, 0)
        """
        return self._inner.position

    def __iter__(self) -> Iterator[Event]:
        it = self._inner.__aiter__()
        while True:
            try:
                yield _wait(it.__anext__())
            except StopAsyncIteration:
                return

    def wait(self) -> ExecResult:
        """Its result (or typed error), once it ended.

        >>> with Sandbox() as sb:
        ...     sb.start_exec(["echo", "done"]).wait().stdout
        'done\\n'
        """
        return _wait(self._inner.wait())

    def write_stdin(self, data: bytes | str) -> None:
        """Writes to its stdin.

        >>> with Sandbox() as sb:
        ...     h = sb.start_exec(["cat"], stdin=True)
        ...     h.write_stdin("typed\\n")
        ...     h.close_stdin()
        ...     h.wait().stdout
        'typed\\n'
        """
        _wait(self._inner.write_stdin(data))

    def close_stdin(self) -> None:
        """Ends its stdin.

        >>> with Sandbox() as sb:
        ...     h = sb.start_exec(["wc", "-c"], stdin=True)
        ...     h.write_stdin(b"12345")
        ...     h.close_stdin()
        ...     h.wait().stdout.strip()
        '5'
        """
        _wait(self._inner.close_stdin())

    def resize(self, rows: int, cols: int) -> None:
        """Resizes its terminal.

        >>> with Sandbox() as sb:
        ...     h = sb.start_exec(["sh", "-c", "read x; stty size"], tty=(24, 80), stdin=True)
        ...     h.resize(30, 90)
        ...     h.write_stdin("go\\n")
        ...     h.wait().stdout.split()[-2:]
        ['30', '90']
        """
        _wait(self._inner.resize(rows, cols))

    def signal(self, signal: int) -> None:
        """Signals its whole process tree.

        >>> with Sandbox() as sb:
        ...     h = sb.start_exec(["sleep", "1000"])
        ...     h.signal(15)
        ...     h.wait().returncode
        -15
        """
        _wait(self._inner.signal(signal))

    def kill(self) -> None:
        """Kills its whole process tree.

        >>> with Sandbox() as sb:
        ...     h = sb.start_exec(["sleep", "1000"])
        ...     h.kill()
        ...     h.wait().ending
        'cancelled'
        """
        _wait(self._inner.kill())


class Sandbox:
    """A sandbox for synchronous code: the arguments and methods of :class:`hangar_sandbox.Sandbox`, each
    call waiting for its result. ``with`` starts it and stops it on the way out."""

    def __init__(self, **kwargs: Any) -> None:
        self._inner = _sandbox.Sandbox(**kwargs)

    @classmethod
    def _of(cls, inner: _sandbox.Sandbox) -> Sandbox:
        sb = cls.__new__(cls)
        sb._inner = inner
        return sb

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r})"

    @property
    def id(self) -> str | None:
        """The sandbox's id, or ``None`` before :meth:`start`.

        >>> Sandbox().id is None
        True
        """
        return self._inner.id

    def start(self) -> Sandbox:
        """Creates the sandbox and waits until it runs.

        >>> sb = Sandbox().start()
        >>> sb.id.startswith("sb-")
        True
        >>> sb.stop().status.is_final
        True
        """
        _wait(self._inner.start())
        return self

    def wait(self) -> Sandbox:
        """Waits until it runs; raises if it has ended.

        >>> sb = Sandbox().wait()
        >>> str(sb.get_status())
        'running'
        >>> _ = sb.stop()
        """
        _wait(self._inner.wait())
        return self

    def info(self) -> SandboxInfo:
        """Its current record.

        >>> with Sandbox(tags={"run": "7"}) as sb:
        ...     sb.info().tags
        {'run': '7'}
        """
        return _wait(self._inner.info())

    def get_status(self) -> SandboxStatus:
        """Its current status.

        >>> with Sandbox() as sb:
        ...     sb.get_status()
        <SandboxStatus.RUNNING: 'running'>
        """
        return _wait(self._inner.get_status())

    def stop(self, *, grace_seconds: float | None = None) -> SandboxInfo | None:
        """Stops it.

        >>> sb = Sandbox().start()
        >>> sb.stop(grace_seconds=1).status
        <SandboxStatus.TERMINATED: 'terminated'>
        """
        return _wait(self._inner.stop(grace_seconds=grace_seconds))

    def publish_port(self, port: int) -> str:
        """Publishes its ``port``; the address to connect to on this machine.

        >>> with Sandbox() as sb:
        ...     sb.publish_port(8000).startswith("127.0.0.1:")
        True
        """
        return _wait(self._inner.publish_port(port))

    def set_network(self, *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> SandboxInfo:
        """Replaces its allow- and deny-lists while it runs.

        >>> with Sandbox(network="egress") as sb:
        ...     sb.set_network(deny=["203.0.113.0/24"]).network.deny
        ('203.0.113.0/24',)
        """
        return _wait(self._inner.set_network(allow=allow, deny=deny))

    def delete(self) -> None:
        """Stops and forgets it.

        >>> sb = Sandbox().start()
        >>> sb.delete()
        >>> [s.id for s in Sandbox.list()].count(sb.id)
        0
        """
        _wait(self._inner.delete())

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _wait(self._inner.__aexit__(exc_type, exc, tb))

    @classmethod
    def list(
        cls,
        *,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        status: SandboxStatus | str | None = None,
        include_stopped: bool = True,
        client: Client | None = None,
    ) -> list[Sandbox]:
        """The sandboxes this client sees.

        >>> with Sandbox(tags=["sync-doc"]) as sb:
        ...     [s.id for s in Sandbox.list(tags=["sync-doc"], include_stopped=False)] == [sb.id]
        True
        """
        found = _wait(_sandbox.Sandbox.list(tags=tags, status=status, include_stopped=include_stopped, client=client))
        return [cls._of(s) for s in found]

    @classmethod
    def from_id(cls, sandbox_id: str, *, client: Client | None = None) -> Sandbox:
        """The existing sandbox with this id.

        >>> with Sandbox() as sb:
        ...     Sandbox.from_id(sb.id).exec(["echo", "again"]).stdout
        'again\\n'
        """
        return cls._of(_wait(_sandbox.Sandbox.from_id(sandbox_id, client=client)))

    get = from_id

    def exec(self, command: Sequence[str], **kwargs: Any) -> ExecResult:
        """Runs a command to its end; the arguments of :meth:`hangar_sandbox.Sandbox.exec`.

        >>> with Sandbox() as sb:
        ...     sb.exec(["sh", "-c", "echo hi; exit 2"]).returncode
        2
        """
        return _wait(self._inner.exec(command, **kwargs))

    def start_exec(self, command: Sequence[str], **kwargs: Any) -> ExecHandle:
        """Starts a command; the arguments of :meth:`hangar_sandbox.Sandbox.start_exec`.

        >>> with Sandbox() as sb:
        ...     [type(ev).__name__ for ev in sb.start_exec(["echo", "x"])]
        ['Output', 'Exit']
        """
        return ExecHandle(_wait(self._inner.start_exec(command, **kwargs)))

    def attach(self, exec_id: str, **kwargs: Any) -> ExecHandle:
        """Follows an exec from byte offsets; see :meth:`hangar_sandbox.Sandbox.attach`.

        >>> with Sandbox() as sb:
        ...     _ = sb.exec(["echo", "hello world"], id="g")
        ...     sb.attach("g", stdout_offset=6).wait().stdout
        'world\\n'
        """
        return ExecHandle(_wait(self._inner.attach(exec_id, **kwargs)))

    def logs(self, **kwargs: Any) -> SandboxLog:
        """Its log read into a :class:`~hangar_sandbox.SandboxLog`; see :meth:`hangar_sandbox.Sandbox.logs`.

        >>> with Sandbox(command="sh", args=["-c", "echo up; sleep 0.2"]) as sb:
        ...     sb.logs(follow=True).text
        'up\\n'
        """
        return _wait(self._inner.logs(**kwargs))

    def stream_logs(self, **kwargs: Any) -> Iterator[Event]:
        """Its log's events, iterated with a plain ``for``; see :meth:`hangar_sandbox.Sandbox.stream_logs`.

        >>> from hangar_sandbox import Output
        >>> with Sandbox(command="sh", args=["-c", "echo up; sleep 0.2"]) as sb:
        ...     [ev.data for ev in sb.stream_logs(follow=True) if isinstance(ev, Output)]
        [b'up\\n']
        """
        it = _wait(self._inner.stream_logs(**kwargs)).__aiter__()
        while True:
            try:
                yield _wait(it.__anext__())
            except StopAsyncIteration:
                return

    def execs(self) -> builtins.list[ExecInfo]:
        """Its execs.

        >>> with Sandbox() as sb:
        ...     _ = sb.exec(["true"], id="one")
        ...     [e.id for e in sb.execs()]
        ['one']
        """
        return _wait(self._inner.execs())

    def read_file(self, path: str) -> bytes:
        """The contents of a file in the sandbox.

        >>> with Sandbox() as sb:
        ...     sb.write_file("/tmp/x", b"\\x00\\x01")
        ...     sb.read_file("/tmp/x")
        b'\\x00\\x01'
        """
        return _wait(self._inner.read_file(path))

    def write_file(self, path: str, data: bytes | str) -> None:
        """Writes a file in the sandbox.

        >>> with Sandbox() as sb:
        ...     sb.write_file("notes.txt", "hi")
        ...     sb.exec(["cat", "notes.txt"]).stdout
        'hi'
        """
        _wait(self._inner.write_file(path, data))


__all__ = ["Client", "ExecHandle", "Sandbox"]
