"""The asyncio API: :class:`Sandbox`, its ``exec`` with live callbacks, and :class:`ExecHandle`.

Everything here is a thin layer over the native module (the Rust SDK): this file decides how output reaches
Python callables, and nothing else about execs, files or sandboxes.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextvars
import datetime
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Union

from . import _native
from ._types import (
    Event,
    ExecInfo,
    ExecResult,
    Exit,
    Gap,
    NetworkPolicy,
    Output,
    SandboxInfo,
    SandboxLog,
    SandboxStatus,
)
from .errors import SandboxNotRunningError, SandboxValidationError

ChunkCallback = Callable[[bytes], Union[None, Awaitable[None]]]
LineCallback = Callable[[str], Union[None, Awaitable[None]]]
_Call = tuple[Callable[[Any], Any], Any]


class Client:
    """Where sandboxes run: a Hangar server, or the embedded engine on this machine (as root).

    :meth:`from_env` is what a :class:`Sandbox` uses unless given another: the server at ``HANGAR_URL``
    (authenticating with ``HANGAR_TOKEN``) when it is set, the embedded engine otherwise (state in
    ``HANGAR_STATE_DIR``, default ``/var/lib/hangar``).

    >>> client = Client.connect("http://127.0.0.1:1", token="secret")   # connects on first use
    >>> client.url
    'http://127.0.0.1:1'
    """

    def __init__(self, native: _native.NativeClient, url: str | None = None) -> None:
        self._native = native
        #: The server's address, or ``None`` for the embedded engine.
        self.url = url

    @classmethod
    def from_env(cls) -> Client:
        """The process-wide default client (``HANGAR_URL``/``HANGAR_TOKEN``, else the embedded engine).

        >>> Client.from_env() is not None
        True
        """
        import os

        return cls(_native.NativeClient.from_env(), os.environ.get("HANGAR_URL") or None)

    @classmethod
    def connect(cls, url: str, token: str | None = None) -> Client:
        """A Hangar server at ``url`` (``http://host:port``); an unreachable one raises
        :class:`~hangar_sandbox.errors.SandboxConnectionError` on the first call."""
        return cls(_native.NativeClient.connect(url, token), url)

    @classmethod
    def embedded(cls, state_dir: str) -> Client:
        """An embedded engine keeping its state in ``state_dir`` (needs root).

        >>> import os
        >>> Client.embedded(os.environ.get("HANGAR_STATE_DIR", "/var/lib/hangar")).url is None
        True
        """
        return cls(_native.NativeClient.embedded(str(state_dir)))


_default_client: Client | None = None


def _client(client: Client | None) -> Client:
    global _default_client
    if client is not None:
        return client
    if _default_client is None:
        _default_client = Client.from_env()
    return _default_client


def _pairs(field: str, mapping: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        raise SandboxValidationError(f"{field}: expected a mapping of names to values, got {type(mapping).__name__}")
    return [(str(k), str(v)) for k, v in mapping.items()]


def _tags(tags: Mapping[str, Any] | Sequence[str] | None) -> list[tuple[str, str]]:
    # The reference SDK takes a list of tags, Hangar keeps a mapping: a bare tag is a key with an empty value.
    if tags is None:
        return []
    if isinstance(tags, Mapping):
        return _pairs("tags", tags)
    if isinstance(tags, str):
        raise SandboxValidationError("tags: expected a list of strings or a mapping, got a string")
    return [(str(t), "") for t in tags]


def _argv(command: Sequence[str]) -> list[str]:
    if isinstance(command, (str, bytes)):
        raise SandboxValidationError(
            f"command: expected a list of strings (no shell is involved), got {command!r}; "
            f"for a shell line use ['sh', '-c', {command!r}]"
        )
    return [str(a) for a in command]


def _data(field: str, data: bytes | str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise SandboxValidationError(f"{field}: expected bytes or str, got {type(data).__name__}")


def _network(network: str | NetworkPolicy | None) -> tuple[str, list[str], list[str]] | None:
    """``network=`` as the native module takes it."""
    if network is None:
        return None
    if isinstance(network, str):
        return (network, [], [])
    if isinstance(network, NetworkPolicy):
        return (network.mode, list(network.allow), list(network.deny))
    raise SandboxValidationError(f"network: {network!r} is not 'none', 'egress' or a NetworkPolicy")


def _resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """``resources={"cpu": "500m", "memory": "256Mi", "disk": "2Gi", "pids": 64}``, Kubernetes-style
    quantities or plain numbers (cores; bytes)."""
    out: dict[str, Any] = {}
    for key, value in (resources or {}).items():
        text = str(value)
        if key in ("cpu", "cpus"):
            out["cpus"] = _native.parse_cpus(f"resources.{key}", text)
        elif key in ("memory", "mem"):
            out["memory_bytes"] = _native.parse_bytes(f"resources.{key}", text)
        elif key in ("disk", "ephemeral-storage", "ephemeral_storage"):
            out["disk_bytes"] = _native.parse_bytes(f"resources.{key}", text)
        elif key in ("pids", "processes"):
            if not text.isdigit():
                raise SandboxValidationError(f"resources.{key}: {value!r} is not a number of processes")
            out["pids"] = int(text)
        elif key in ("gpu", "nvidia.com/gpu"):
            raise SandboxValidationError(f"resources.{key}: this Hangar has no GPUs to give")
        else:
            raise SandboxValidationError(
                f"resources.{key}: unknown resource (use cpu, memory, disk or pids)"
            )
    return out


class _Sinks:
    """Where one exec's output goes as it arrives: print-through, chunk callbacks, line callbacks.

    Synchronous callbacks run in a thread of the exec's own (one at a time, in order), so a callback that
    blocks holds up only its own exec: the event loop and every other exec keep streaming. Coroutine
    callbacks run on the event loop and are awaited in order.
    """

    def __init__(
        self,
        stream_output: bool,
        on_stdout: ChunkCallback | None,
        on_stderr: ChunkCallback | None,
        on_stdout_line: LineCallback | None,
        on_stderr_line: LineCallback | None,
    ) -> None:
        self.print = stream_output
        self.chunk = {"stdout": on_stdout, "stderr": on_stderr}
        self.line = {"stdout": on_stdout_line, "stderr": on_stderr_line}
        self.lines = {s: _native.LineBuffer() for s, f in self.line.items() if f is not None}
        callbacks = [f for f in (*self.chunk.values(), *self.line.values()) if f is not None]
        self.is_async = any(inspect.iscoroutinefunction(f) for f in callbacks)
        self.threaded = bool(callbacks) and not self.is_async
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def active(self) -> bool:
        return self.print or any(self.chunk.values()) or any(self.line.values())

    def _calls(self, batch: list[Event]) -> Iterator[_Call]:
        for ev in batch:
            if type(ev) is not Output:
                continue
            if self.print:
                out = sys.stdout if ev.stream == "stdout" else sys.stderr
                out.flush()  # what the program printed itself comes first
                buf = getattr(out, "buffer", None)
                if buf is not None:
                    buf.write(ev.data)
                    buf.flush()
                else:  # a text stream without bytes underneath (an IDE console, say)
                    out.write(ev.data.decode("utf-8", "replace"))
                    out.flush()
            f = self.chunk[ev.stream]
            if f is not None:
                yield f, ev.data
            lf = self.line[ev.stream]
            if lf is not None:
                for line in self.lines[ev.stream].push(ev.data):
                    yield lf, line

    def _finish_calls(self) -> Iterator[_Call]:
        for stream, buf in self.lines.items():
            last, f = buf.finish(), self.line[stream]
            if last is not None and f is not None:
                yield f, last

    def _run_sync(self, calls: Iterator[_Call] | list[_Call]) -> None:
        for f, arg in calls:
            f(arg)

    async def _run(self, calls: Iterator[_Call]) -> None:
        if self.is_async:
            for f, arg in calls:
                r = f(arg)
                if inspect.isawaitable(r):
                    await r
        elif self.threaded:
            if self.pool is None:
                self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hangar-exec-callbacks")
            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.pool, ctx.run, self._run_sync, list(calls))
        else:
            self._run_sync(calls)

    async def deliver(self, batch: list[Event]) -> None:
        await self._run(self._calls(batch))

    async def finish(self) -> None:
        await self._run(self._finish_calls())

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False)


async def _follow(run: _native.NativeRun, sinks: _Sinks) -> ExecResult:
    """Delivers the run's output to ``sinks`` and returns its result. Whatever stops this early — a callback
    that raised, a cancelled task, Ctrl-C — kills the exec's tree first; a callback's exception then
    propagates with the partial result attached as ``exec_result``."""
    try:
        while (batch := await run.next_batch()) is not None:
            await sinks.deliver(batch)
        await sinks.finish()
        return await run.result()
    except BaseException as exc:
        partial = await _abandon(run)
        if partial is not None and getattr(exc, "exec_result", None) is None and isinstance(exc, Exception):
            try:
                exc.exec_result = partial  # type: ignore[attr-defined]
                exc.add_note(f"hangar: exec {run.id} was killed; exc.exec_result holds its output so far")
            except AttributeError:  # an exception type with __slots__
                pass
        raise
    finally:
        sinks.close()


async def _abandon(run: _native.NativeRun) -> ExecResult | None:
    """Kills the run's process tree and returns what it printed, without raising."""
    try:
        await run.signal(9)
    except Exception:  # it may have ended already
        pass
    try:
        return await asyncio.wait_for(run.result(), 30)
    except BaseException as e:  # the kill's own result: a typed error still carries the output
        return getattr(e, "exec_result", None)


class ExecHandle:
    """A started exec (from :meth:`Sandbox.start_exec` or :meth:`Sandbox.attach`): its events as they come,
    its stdin, terminal size and signals, and its result.

    ``async for ev in handle`` yields :class:`Output` (stream, offset, data), :class:`Gap` (bytes lost to
    the journal cap while nobody was attached, or dropped after another client had them) and last the
    :class:`Exit`. :attr:`position` is where a
    later :meth:`Sandbox.attach` resumes from. Leaving it (or losing the process) does not stop the exec:
    it keeps running, journaled, until it ends.

    .. code-block:: python

        h = await sb.start_exec(["python3", "-u", "train.py"], id="train-1")
        async for ev in h:
            if isinstance(ev, Output):
                print(ev.stream, ev.offset, ev.data)
        result = await h.wait()
    """

    def __init__(self, run: _native.NativeRun, start: tuple[int, int] = (0, 0)) -> None:
        self._run = run
        self._position = list(start)
        self._exit: Exit | None = None

    @property
    def id(self) -> str:
        """The exec's id, to attach to it again.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["true"], id="build-1")
        ...         return h.id
        >>> asyncio.run(demo())
        'build-1'
        """
        return self._run.id

    @property
    def sandbox_id(self) -> str:
        """The sandbox it runs in.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         return (await sb.start_exec(["true"])).sandbox_id == sb.id
        >>> asyncio.run(demo())
        True
        """
        return self._run.sandbox_id

    @property
    def command(self) -> list[str]:
        """The command.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         return (await sb.start_exec(["echo", "hi"])).command
        >>> asyncio.run(demo())
        ['echo', 'hi']
        """
        return list(self._run.command)

    @property
    def position(self) -> tuple[int, int]:
        """Bytes of (stdout, stderr) received so far, counted from the start of each stream.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["sh", "-c", "printf abc; printf de >&2"])
        ...         async for _ in h:
        ...             pass
        ...         return h.position
        >>> asyncio.run(demo())
        (3, 2)
        """
        return (self._position[0], self._position[1])

    @property
    def exit(self) -> Exit | None:
        """The exec's :class:`Exit`, once the iteration reached it.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["sh", "-c", "exit 4"])
        ...         async for _ in h:
        ...             pass
        ...         return h.exit.returncode
        >>> asyncio.run(demo())
        4
        """
        return self._exit

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (batch := await self._run.next_batch()) is not None:
            for ev in batch:
                if type(ev) is Output:
                    self._position[ev.stream == "stderr"] = ev.end
                elif type(ev) is Gap:
                    self._position[ev.stream == "stderr"] = ev.end
                elif type(ev) is Exit:
                    self._exit = ev
                yield ev

    async def wait(self) -> ExecResult:
        """Follows the exec to its end and returns its :class:`ExecResult` (output from where the handle
        started), raising its typed error (timeout, ``check``, lost bytes) as :meth:`Sandbox.exec` does.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["python3", "-c", "print(6 * 7)"])
        ...         return (await h.wait()).stdout
        >>> asyncio.run(demo())
        '42\\n'
        """
        return await self._run.result()

    async def write_stdin(self, data: bytes | str) -> None:
        """Writes to the exec's stdin (started with ``stdin=True`` or a ``tty``).

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["cat"], stdin=True)
        ...         await h.write_stdin("hello\\n")
        ...         await h.close_stdin()
        ...         return (await h.wait()).stdout
        >>> asyncio.run(demo())
        'hello\\n'
        """
        await self._run.write_stdin(_data("data", data))

    async def close_stdin(self) -> None:
        """Ends stdin (for a terminal: sends ^D).

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["wc", "-l"], stdin=True)
        ...         await h.write_stdin(b"a\\nb\\n")
        ...         await h.close_stdin()
        ...         return (await h.wait()).stdout.strip()
        >>> asyncio.run(demo())
        '2'
        """
        await self._run.close_stdin()

    async def resize(self, rows: int, cols: int) -> None:
        """Resizes the exec's terminal.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["sh", "-c", "read x; stty size"], tty=(24, 80), stdin=True)
        ...         await h.resize(50, 120)
        ...         await h.write_stdin("go\\n")
        ...         return (await h.wait()).stdout.split()[-2:]
        >>> asyncio.run(demo())
        ['50', '120']
        """
        await self._run.resize(rows, cols)

    async def signal(self, signal: int) -> None:
        """Sends a signal to the exec's whole process tree.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["sleep", "1000"])
        ...         await h.signal(15)
        ...         return (await h.wait()).returncode
        >>> asyncio.run(demo())
        -15
        """
        await self._run.signal(signal)

    async def kill(self) -> None:
        """Kills the exec's whole process tree; it ends as ``cancelled``.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["sleep", "1000"])
        ...         await h.kill()
        ...         return (await h.wait()).ending
        >>> asyncio.run(demo())
        'cancelled'
        """
        await self._run.signal(9)


class LogStream:
    """A sandbox's log being read (from :meth:`Sandbox.stream_logs`): ``async for`` yields its events;
    :attr:`position` is the offset to resume from.

    .. code-block:: python

        stream = await sb.stream_logs(follow=True, tail_lines=20)
        async for ev in stream:
            if isinstance(ev, Output):
                sys.stdout.buffer.write(ev.data)
        print("resume from", stream.position)
    """

    def __init__(self, native: _native.NativeLog) -> None:
        self._native = native
        self._position = native.start

    @property
    def position(self) -> int:
        """The offset up to which the log has been delivered.

        >>> async def demo():
        ...     async with Sandbox(command="sh", args=["-c", "printf abc; sleep 60"]) as sb:
        ...         await asyncio.sleep(0.3)
        ...         s = await sb.stream_logs()
        ...         async for _ in s:
        ...             pass
        ...         return s.position
        >>> asyncio.run(demo())
        3
        """
        return self._position

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (batch := await self._native.next_batch()) is not None:
            for ev in batch:
                if type(ev) is Output or type(ev) is Gap:
                    self._position = ev.end
                yield ev
        await self._native.finish()


class Sandbox:
    """An isolated Linux environment made from a container image, with commands run in it live.

    ``async with`` starts it (waiting until it runs) and stops it on the way out, also on an exception or
    a cancellation. Without a :class:`Client`, the one from :meth:`Client.from_env` is used.

    .. code-block:: python

        async with Sandbox(command="sleep", args=["infinity"], container_image="python:3.11") as sb:
            r = await sb.exec(["python", "-c", "print(6 * 7)"], check=True)
            assert r.stdout == "42\\n"

    Arguments: ``container_image`` (default: the engine's built-in image, the host's own userland with
    Python 3), ``command`` and ``args`` (the main command; the sandbox ends when it does and its output is
    the sandbox's log, :meth:`logs`; default none: the sandbox runs until it is stopped or its lifetime ends;
    ``args`` alone go to ``sleep``), ``image_command=True`` (without a command, run the image's own entrypoint
    and cmd, as ``docker run IMAGE``), ``env`` or ``environment_variables``, ``resources``
    (``{"cpu": "500m", "memory": "256Mi", "disk": "2Gi", "pids": 64}``), ``max_lifetime_seconds`` (it is
    stopped after that long, whoever is watching; default an hour), ``tags`` (a mapping, or a list of bare
    tags), ``working_dir``, ``request_id`` (a retried creation with the same id gives the same sandbox),
    ``network`` (``"none"``: loopback only; ``"egress"``: every public address; or a :class:`NetworkPolicy`
    with allow- and deny-lists; default: the engine's or server's, loopback only unless configured).
    """

    def __init__(
        self,
        *,
        command: str | None = None,
        args: Sequence[str] | None = None,
        container_image: str | None = None,
        env: Mapping[str, str] | None = None,
        environment_variables: Mapping[str, str] | None = None,
        resources: Mapping[str, Any] | None = None,
        max_lifetime_seconds: float | None = None,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        working_dir: str | None = None,
        request_id: str | None = None,
        image_command: bool = False,
        network: str | NetworkPolicy | None = None,
        client: Client | None = None,
    ) -> None:
        if env is not None and environment_variables is not None:
            raise SandboxValidationError("env and environment_variables: give one of them")
        self._spec: dict[str, Any] = dict(
            image=container_image,
            command=command,
            args=[str(a) for a in (args or [])],
            env=_pairs("env", env if env is not None else environment_variables),
            tags=_tags(tags),
            workdir=working_dir,
            max_lifetime_seconds=max_lifetime_seconds,
            request_id=request_id,
            image_command=image_command,
            network=_network(network),
            **_resources(resources),
        )
        self._client_arg = client
        self._native: _native.NativeSandbox | None = None
        self._starting: asyncio.Future[None] | None = None

    @classmethod
    def _wrap(cls, native: _native.NativeSandbox, client: Client) -> Sandbox:
        sb = cls.__new__(cls)
        sb._spec = {}
        sb._client_arg = client
        sb._native = native
        sb._starting = None
        return sb

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r})"

    @property
    def id(self) -> str | None:
        """The sandbox's id (``sb-`` and 16 hex digits), or ``None`` before :meth:`start`.

        >>> sb = Sandbox()
        >>> sb.id is None
        True
        """
        return self._native.id if self._native is not None else None

    @property
    def sandbox_id(self) -> str | None:
        """Same as :attr:`id` (the name ``cwsandbox`` uses).

        >>> Sandbox().sandbox_id is None
        True
        """
        return self.id

    def _require(self) -> _native.NativeSandbox:
        if self._native is None:
            raise SandboxNotRunningError("the sandbox was not started: use `async with Sandbox(...)` or `await sb.start()`")
        return self._native

    # ---- lifecycle ----

    async def start(self) -> Sandbox:
        """Creates the sandbox and waits until its main command runs (pulling the image if needed).
        Starting a started sandbox does nothing.

        >>> async def demo():
        ...     sb = await Sandbox(command="sleep", args=["infinity"]).start()
        ...     try:
        ...         return sb.id.startswith("sb-")
        ...     finally:
        ...         await sb.stop()
        >>> asyncio.run(demo())
        True
        """
        if self._native is None:
            client = _client(self._client_arg)
            self._client_arg = client
            self._native = await client._native.create(**self._spec)
        return self

    async def wait(self) -> Sandbox:
        """Waits until the sandbox runs; raises :class:`~hangar_sandbox.errors.SandboxNotRunningError` (or
        :class:`~hangar_sandbox.errors.SandboxFailedError` when it failed to start) if it has ended.

        >>> async def demo():
        ...     sb = Sandbox()
        ...     await sb.wait()                      # starts it too
        ...     status = await sb.get_status()
        ...     await sb.stop()
        ...     return status
        >>> asyncio.run(demo())
        <SandboxStatus.RUNNING: 'running'>
        """
        await self.start()
        info = await self.info()
        if info.status is SandboxStatus.RUNNING:
            return self
        if info.status is SandboxStatus.FAILED and info.error:
            from .errors import SandboxFailedError

            raise SandboxFailedError(f"sandbox {info.id} failed: {info.error}", sandbox_id=info.id)
        raise SandboxNotRunningError(
            f"sandbox {info.id} is not running (it is {info.status.value})", sandbox_id=info.id, status=info.status.value
        )

    async def info(self) -> SandboxInfo:
        """The sandbox's current record.

        >>> async def demo():
        ...     async with Sandbox(tags={"team": "ml"}, resources={"memory": "512Mi"}) as sb:
        ...         info = await sb.info()
        ...         return info.tags, info.memory_bytes
        >>> asyncio.run(demo())
        ({'team': 'ml'}, 536870912)
        """
        return await self._require().info()

    async def get_status(self) -> SandboxStatus:
        """The sandbox's current :class:`SandboxStatus`.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         pass
        ...     return (await sb.get_status()).is_final
        >>> asyncio.run(demo())
        True
        """
        return (await self.info()).status

    async def stop(self, *, grace_seconds: float | None = None) -> SandboxInfo | None:
        """Stops the sandbox: SIGTERM to its processes, SIGKILL after the grace (default 10 s). Returns its
        final record; stopping an ended (or never started) sandbox does nothing.

        >>> async def demo():
        ...     sb = await Sandbox().start()
        ...     return (await sb.stop(grace_seconds=1)).status
        >>> asyncio.run(demo())
        <SandboxStatus.TERMINATED: 'terminated'>
        """
        if self._native is None:
            return None
        return await self._native.stop(grace_seconds)

    async def publish_port(self, port: int) -> str:
        """Publishes the sandbox's ``port`` and returns ``"127.0.0.1:PORT"`` to connect to on this machine: it
        reaches ``127.0.0.1:port`` inside the sandbox, whatever its network. Embedded, it stays until the
        sandbox ends; through a server it is a tunnel from this process, over the server's authenticated API.

        >>> import urllib.request
        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         await sb.write_file("/tmp/index.html", b"hello from the sandbox")
        ...         await sb.start_exec(["python3", "-m", "http.server", "8000", "-d", "/tmp"])
        ...         await sb.exec(["sh", "-c", "until curl -so /dev/null 127.0.0.1:8000; do sleep 0.1; done"])
        ...         at = await sb.publish_port(8000)
        ...         return await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{at}/index.html").read())
        >>> asyncio.run(demo())
        b'hello from the sandbox'
        """
        return await self._require().publish_port(port)

    async def set_network(self, *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> SandboxInfo:
        """Replaces the running sandbox's allow- and deny-lists (its mode stays egress). New connections, and
        the next lookups, follow them at once; open connections stay up.

        >>> async def demo():
        ...     async with Sandbox(network="egress") as sb:
        ...         info = await sb.set_network(allow=["10.20.0.0/16"], deny=["10.20.9.0/24"])
        ...         return info.network
        >>> asyncio.run(demo())
        NetworkPolicy(mode='egress', allow=('10.20.0.0/16',), deny=('10.20.9.0/24',))
        """
        return await self._require().set_network("egress", [str(a) for a in allow], [str(d) for d in deny])

    async def delete(self) -> None:
        """Stops the sandbox if needed and forgets it: its record and files are gone.

        >>> from hangar_sandbox.errors import SandboxNotFoundError
        >>> async def demo():
        ...     sb = await Sandbox().start()
        ...     await sb.delete()
        ...     try:
        ...         await Sandbox.from_id(sb.id)
        ...     except SandboxNotFoundError:
        ...         return "gone"
        >>> asyncio.run(demo())
        'gone'
        """
        if self._native is not None:
            await self._native.delete()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._native is None:
            return
        try:
            # Shielded: a second cancellation must not leave the sandbox running.
            await asyncio.shield(self._native.stop(None))
        except Exception:
            if exc is None:
                raise

    @classmethod
    async def list(
        cls,
        *,
        tags: Mapping[str, str] | Sequence[str] | None = None,
        status: SandboxStatus | str | None = None,
        include_stopped: bool = True,
        client: Client | None = None,
    ) -> list[Sandbox]:
        """The sandboxes this client sees (oldest first), optionally only those with all of ``tags``
        and in ``status``.

        >>> async def demo():
        ...     async with Sandbox(tags=["nightly-doc"]) as sb:
        ...         found = await Sandbox.list(tags=["nightly-doc"], include_stopped=False)
        ...         return [s.id for s in found] == [sb.id]
        >>> asyncio.run(demo())
        True
        """
        c = _client(client)
        want_tags = dict(_tags(tags))
        want_status = SandboxStatus(status) if status is not None else None
        out = []
        for native, info in await c._native.list():
            if want_status is not None and info.status is not want_status:
                continue
            if not include_stopped and info.status.is_final:
                continue
            if any(info.tags.get(k) != v for k, v in want_tags.items()):
                continue
            out.append(cls._wrap(native, c))
        return out

    @classmethod
    async def from_id(cls, sandbox_id: str, *, client: Client | None = None) -> Sandbox:
        """The existing sandbox with this id (any state); raises
        :class:`~hangar_sandbox.errors.SandboxNotFoundError` if there is none.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         again = await Sandbox.from_id(sb.id)
        ...         return (await again.exec(["echo", "same"])).stdout
        >>> asyncio.run(demo())
        'same\\n'
        """
        c = _client(client)
        return cls._wrap(await c._native.get(sandbox_id), c)

    get = from_id

    # ---- commands ----

    async def exec(
        self,
        command: Sequence[str],
        *,
        stream_output: bool = False,
        on_stdout: ChunkCallback | None = None,
        on_stderr: ChunkCallback | None = None,
        on_stdout_line: LineCallback | None = None,
        on_stderr_line: LineCallback | None = None,
        timeout_seconds: float | None = None,
        check: bool = False,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | str | None = None,
        id: str | None = None,
        merged: bool = False,
        capture: bool = True,
    ) -> ExecResult:
        """Runs ``command`` (a list: no shell is involved) to its end and returns its :class:`ExecResult`.

        Output reaches you live, as it is written: ``stream_output=True`` prints it through to this
        process's ``sys.stdout.buffer`` / ``sys.stderr.buffer`` (flushed per chunk); ``on_stdout`` /
        ``on_stderr`` get raw ``bytes`` chunks in order (a chunk may end mid-line); ``on_stdout_line`` /
        ``on_stderr_line`` get whole lines without their newline. Plain functions run in a thread of this
        exec's own, coroutine functions on the event loop; a callback that raises kills the command's tree
        and its exception propagates, carrying the output so far as ``exec_result``.

        ``timeout_seconds`` kills the whole tree and raises :class:`~hangar_sandbox.errors.SandboxTimeoutError`
        with the partial result; ``check=True`` raises :class:`~hangar_sandbox.errors.SandboxExecutionError`
        for a non-zero exit; ``stdin`` is fed to the command, then end of file; ``id`` makes a retry find
        the first run instead of starting a second; ``merged`` puts stderr on the stdout pipe (exact
        interleaving); ``capture=False`` keeps the output out of the result (callbacks still see it).
        Cancelling the task (or Ctrl-C) kills the command.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         chunks = []
        ...         r = await sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"], on_stdout=chunks.append)
        ...         return r.returncode, r.stdout, r.stderr, chunks
        >>> asyncio.run(demo())
        (3, 'out\\n', 'err\\n', [b'out\\n'])
        """
        sinks = _Sinks(stream_output, on_stdout, on_stderr, on_stdout_line, on_stderr_line)
        done = await self._require().exec(
            _argv(command),
            events=sinks.active,
            env=_pairs("env", env),
            cwd=cwd,
            timeout_seconds=timeout_seconds,
            stdin=_data("stdin", stdin),
            id=id,
            merged=merged,
            check=check,
            capture=capture,
        )
        if isinstance(done, ExecResult):  # nothing to deliver: the native side ran it to its end
            return done
        return await _follow(done, sinks)

    async def start_exec(
        self,
        command: Sequence[str],
        *,
        stdin: bool | bytes | str = False,
        tty: tuple[int, int] | None = None,
        timeout_seconds: float | None = None,
        check: bool = False,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        id: str | None = None,
        merged: bool = False,
        capture: bool = True,
        kill_on_disconnect_seconds: float | None = None,
    ) -> ExecHandle:
        """Starts ``command`` and returns an :class:`ExecHandle` for its events, stdin and signals.

        ``stdin=True`` keeps stdin open for :meth:`ExecHandle.write_stdin` (bytes give fixed input);
        ``tty=(rows, cols)`` runs it under a terminal; ``kill_on_disconnect_seconds`` kills it when no
        client was attached for that long (by default it runs on, its output journaled for
        :meth:`attach`).

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         h = await sb.start_exec(["sh", "-c", "echo hi"])
        ...         return [type(ev).__name__ async for ev in h]
        >>> asyncio.run(demo())
        ['Output', 'Exit']
        """
        fixed = None if isinstance(stdin, bool) else _data("stdin", stdin)
        run = await self._require().exec(
            _argv(command),
            events=True,
            env=_pairs("env", env),
            cwd=cwd,
            timeout_seconds=timeout_seconds,
            stdin=fixed,
            open_stdin=stdin is True,
            id=id,
            tty=tty,
            merged=merged,
            check=check,
            capture=capture,
            kill_on_disconnect_ms=None if kill_on_disconnect_seconds is None else int(kill_on_disconnect_seconds * 1000),
        )
        run.keep()  # received: from here on, losing the handle leaves the exec running (journaled)
        return ExecHandle(run)

    async def attach(
        self, exec_id: str, *, stdout_offset: int = 0, stderr_offset: int = 0, capture: bool = True
    ) -> ExecHandle:
        """Follows exec ``exec_id`` (running or ended, started by any client) from these byte offsets:
        exactly the bytes from there on, then its live output, then its exit.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         await sb.exec(["echo", "hello world"], id="greet")
        ...         rest = await (await sb.attach("greet", stdout_offset=6)).wait()
        ...         return rest.stdout
        >>> asyncio.run(demo())
        'world\\n'
        """
        run = await self._require().attach(exec_id, stdout_offset, stderr_offset, capture)
        return ExecHandle(run, (stdout_offset, stderr_offset))

    # ---- logs ----

    async def stream_logs(
        self,
        *,
        follow: bool = False,
        from_offset: int = 0,
        tail_lines: int | None = None,
        since: datetime.datetime | float | None = None,
    ) -> LogStream:
        """The sandbox's log: its main command's stdout and stderr, in the order they were written, while it
        runs and after it ended (until the sandbox is deleted). ``async for`` over the :class:`LogStream`
        yields :class:`Output` (all on ``"stdout"``), :class:`Gap` and, once the main command ended, its
        :class:`Exit`. Without ``follow`` it stops at what was there; with it, at the main command's end.
        ``from_offset`` resumes exactly after an earlier read; ``tail_lines`` starts at the last lines;
        ``since`` (a timezone-aware ``datetime`` or a Unix time) at the first bytes written then or later.

        >>> async def demo():
        ...     async with Sandbox(command="sh", args=["-c", "echo one; echo two >&2; sleep 0.5"]) as sb:
        ...         lines = []
        ...         async for ev in await sb.stream_logs(follow=True):
        ...             if isinstance(ev, Output):
        ...                 lines.append(ev.data)
        ...         return b"".join(lines)
        >>> asyncio.run(demo())
        b'one\\ntwo\\n'
        """
        if isinstance(since, datetime.datetime):
            if since.tzinfo is None:
                raise SandboxValidationError("since: use a timezone-aware datetime (naive ones are ambiguous)")
            since = since.timestamp()
        native = await self._require().logs(
            follow=follow, from_offset=from_offset, tail_lines=tail_lines, since_seconds=since
        )
        return LogStream(native)

    async def logs(
        self,
        *,
        follow: bool = False,
        from_offset: int = 0,
        tail_lines: int | None = None,
        since: datetime.datetime | float | None = None,
    ) -> SandboxLog:
        """The sandbox's log read into a :class:`SandboxLog` (see :meth:`stream_logs` for the arguments).

        >>> async def demo():
        ...     async with Sandbox(command="sh", args=["-c", "seq 3; sleep 60"]) as sb:
        ...         await asyncio.sleep(0.3)
        ...         return (await sb.logs()).text, (await sb.logs(tail_lines=1)).text
        >>> asyncio.run(demo())
        ('1\\n2\\n3\\n', '3\\n')
        """
        stream = await self.stream_logs(follow=follow, from_offset=from_offset, tail_lines=tail_lines, since=since)
        data, gaps, exit = bytearray(), [], None
        async for ev in stream:
            if type(ev) is Output:
                data += ev.data
            elif type(ev) is Gap:
                gaps.append(ev)
            elif type(ev) is Exit:
                exit = ev
        return SandboxLog(data=bytes(data), gaps=gaps, exit=exit, next_offset=stream.position)

    async def execs(self) -> builtins.list[ExecInfo]:
        """The sandbox's execs, running and ended (while their journals are kept).

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         await sb.exec(["true"], id="first")
        ...         return [(e.id, e.running, e.returncode) for e in await sb.execs()]
        >>> asyncio.run(demo())
        [('first', False, 0)]
        """
        return await self._require().execs()

    # ---- files ----

    async def read_file(self, path: str) -> bytes:
        """The contents of ``path`` in the sandbox (relative paths are under its working directory); raises
        :class:`~hangar_sandbox.errors.SandboxFileError` naming the path when it cannot.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         await sb.exec(["sh", "-c", "echo 42 > /tmp/answer"])
        ...         return await sb.read_file("/tmp/answer")
        >>> asyncio.run(demo())
        b'42\\n'
        """
        return await self._require().read_file(str(path))

    async def write_file(self, path: str, data: bytes | str) -> None:
        """Writes ``data`` (``str`` is UTF-8) to ``path`` in the sandbox, creating parent directories.

        >>> async def demo():
        ...     async with Sandbox() as sb:
        ...         await sb.write_file("/work/cfg/train.toml", "epochs = 3\\n")
        ...         return (await sb.exec(["cat", "/work/cfg/train.toml"])).stdout
        >>> asyncio.run(demo())
        'epochs = 3\\n'
        """
        await self._require().write_file(str(path), _data("data", data))
