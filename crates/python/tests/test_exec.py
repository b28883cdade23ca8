"""Callbacks under pressure (raising, blocking, many execs at once, a gigabyte), interruption, and the exec
journal from Python (handles, offsets, attach, stdin, PTY) — on both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import py, spread

from hangar_sandbox import Exit, Output, Sandbox, SandboxStatus


class Boom(Exception):
    pass


def test_a_callback_that_raises_stops_the_exec_and_propagates(backend):
    code = "import os, time\nos.write(1, b'first\\n')\ntime.sleep(1000)\n"

    def cb(data: bytes) -> None:
        raise Boom(f"refused {data!r}")

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            t0 = time.monotonic()
            with pytest.raises(Boom) as e:
                await sb.exec(py(code + "# marker-raise"), on_stdout=cb)
            took = time.monotonic() - t0
            left = await sb.exec(["pgrep", "-f", "marker-raise"])
            return e.value, took, left

    err, took, left = asyncio.run(main())
    assert str(err) == "refused b'first\\n'"
    assert err.exec_result.stdout == "first\n" and err.exec_result.ending == "cancelled"
    assert took < 10
    assert left.returncode == 1, f"the exec's tree survived: {left.stdout}"


def test_a_blocking_callback_holds_up_only_its_own_exec(backend):
    ticks = "import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.15)\n"
    fast: list[float] = []
    slow: list[float] = []

    def blocking(_data: bytes) -> None:
        slow.append(time.monotonic())
        time.sleep(1.0)

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            return await asyncio.gather(
                sb.exec(py("print('x', flush=True)"), on_stdout=blocking),
                sb.exec(py(ticks), on_stdout=lambda d: fast.append(time.monotonic())),
            )

    slow_r, fast_r = asyncio.run(main())
    assert slow_r.stdout == "x\n" and fast_r.stdout == "".join(f"{i}\n" for i in range(8))
    # The other exec's chunks kept arriving one by one while the blocking callback slept.
    assert len(fast) >= 6 and spread(fast) > 0.8
    during = [t for t in fast if slow[0] < t < slow[0] + 1.0]
    assert len(during) >= 3, f"nothing arrived while a callback blocked: {fast} vs {slow}"


def test_fifty_concurrent_execs_from_one_event_loop(backend):
    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            seen: dict[int, list[bytes]] = {i: [] for i in range(50)}
            results = await asyncio.gather(
                *(
                    sb.exec(["sh", "-c", f"for j in 1 2 3; do echo {i}-$j; done"], on_stdout=seen[i].append)
                    for i in range(50)
                )
            )
            return seen, results

    seen, results = asyncio.run(main())
    for i, r in enumerate(results):
        want = "".join(f"{i}-{j}\n" for j in (1, 2, 3))
        assert r.returncode == 0 and r.stdout == want and b"".join(seen[i]).decode() == want


def test_a_gibibyte_through_on_stdout_counted_exactly(backend):
    total = 0
    chunks = 0

    def count(data: bytes) -> None:
        nonlocal total, chunks
        total += len(data)
        chunks += 1

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            return await sb.exec(["head", "-c", str(1 << 30), "/dev/zero"], on_stdout=count, capture=False)

    r = asyncio.run(main())
    assert r.returncode == 0 and r.stdout_bytes == b""
    assert total == 1 << 30 and chunks > 1


def test_async_callbacks_are_awaited_in_order(backend):
    got: list[bytes] = []

    async def slow_sink(data: bytes) -> None:
        await asyncio.sleep(0.01)
        got.append(data)

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            return await sb.exec(["seq", "1", "2000"], on_stdout=slow_sink)

    r = asyncio.run(main())
    assert b"".join(got).decode() == r.stdout == "".join(f"{i}\n" for i in range(1, 2001))


CTRL_C = """
import asyncio, sys
from hangar_sandbox import Sandbox

async def main():
    async with Sandbox(command="sleep", args=["infinity"]) as sb:
        print(sb.id, flush=True)
        await sb.exec(["sh", "-c", "echo started; exec sleep 1000"], on_stdout=lambda d: print("out", flush=True))

asyncio.run(main())
"""


CTRL_C_SYNC = """
from hangar_sandbox.sync import Sandbox

with Sandbox(command="sleep", args=["infinity"]) as sb:
    print(sb.id, flush=True)
    sb.exec(["sh", "-c", "echo started; exec sleep 1000"], on_stdout=lambda d: print("out", flush=True))
"""


@pytest.mark.parametrize("script", [CTRL_C, CTRL_C_SYNC], ids=["asyncio", "sync"])
def test_ctrl_c_kills_the_exec_and_stops_the_sandbox(backend, script):
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=backend.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sandbox_id = child.stdout.readline().strip()
    assert child.stdout.readline().strip() == "out", child.stderr.read()
    t0 = time.monotonic()
    child.send_signal(signal.SIGINT)
    code = child.wait(60)
    took = time.monotonic() - t0
    assert code != 0 and "KeyboardInterrupt" in child.stderr.read()
    assert took < 15

    async def status():
        return await (await Sandbox.from_id(sandbox_id, client=backend.client)).get_status()

    assert asyncio.run(status()).is_final


def test_handles_offsets_attach_and_resume(backend):
    code = "import sys\nfor i in range(100):\n    print(f'line {i}')\nprint('oops', file=sys.stderr)\n"

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            h = await sb.start_exec(py(code), id="job-1")
            events = [ev async for ev in h]
            again = await sb.attach("job-1", stdout_offset=500)
            rest = await again.wait()
            return h, events, rest

    h, events, rest = asyncio.run(main())
    out = [ev for ev in events if isinstance(ev, Output) and ev.stream == "stdout"]
    whole = "".join(f"line {i}\n" for i in range(100)).encode()
    assert b"".join(ev.data for ev in out) == whole
    assert [ev.offset for ev in out] == [sum(len(e.data) for e in out[:k]) for k in range(len(out))]
    assert isinstance(events[-1], Exit) and events[-1].returncode == 0 and events[-1].stdout_total == len(whole)
    assert h.position == (len(whole), len("oops\n")) and h.exit == events[-1]
    assert rest.stdout_bytes == whole[500:] and rest.stderr == "oops\n"


def test_stdin_streaming_and_fixed(backend):
    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            fixed = await sb.exec(["python3", "-c", "import sys; print(sys.stdin.read().upper())"], stdin="hello")
            h = await sb.start_exec(["wc", "-c"], stdin=True)
            for _ in range(16):
                await h.write_stdin(b"x" * 65536)
            await h.close_stdin()
            return fixed, await h.wait()

    fixed, counted = asyncio.run(main())
    assert fixed.stdout == "HELLO\n"
    assert counted.stdout.strip() == str(16 * 65536)


def test_pty(backend):
    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            h = await sb.start_exec(["sh", "-c", "stty size; test -t 0 && echo tty"], tty=(40, 100))
            return await h.wait()

    r = asyncio.run(main())
    assert r.stdout.replace("\r", "") == "40 100\ntty\n"


def test_sync_facade(backend):
    from hangar_sandbox.sync import Sandbox as SyncSandbox

    lines: list[str] = []
    with SyncSandbox(command="sleep", args=["infinity"], client=backend.client) as sb:
        r = sb.exec(["sh", "-c", "echo a; echo b"], on_stdout_line=lines.append, check=True)
        sb.write_file("/tmp/f.bin", bytes(range(256)))
        data = sb.read_file("/tmp/f.bin")
        h = sb.start_exec(["echo", "handle"])
        events = list(h)
        status = sb.get_status()
    assert r.stdout == "a\nb\n" and lines == ["a", "b"]
    assert data == bytes(range(256))
    assert isinstance(events[-1], Exit) and b"".join(e.data for e in events if isinstance(e, Output)) == b"handle\n"
    assert status is SandboxStatus.RUNNING and sb.get_status().is_final


@pytest.mark.parametrize("with_callback", [False, True])
@pytest.mark.parametrize("when", ["running", "starting"])
def test_cancelling_the_task_kills_the_exec(backend, with_callback, when):
    """Cancelled once it runs, or while its start is still under way (the start's reply may then be on
    its way): either way it ends, and no exec is left running."""

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            kw = {"on_stdout": lambda d: None} if with_callback else {}
            task = asyncio.create_task(sb.exec(["sh", "-c", "echo up; exec sleep 1000.125"], **kw))
            if when == "running":
                for _ in range(100):
                    if (await sb.exec(["pgrep", "-f", "sleep 1000.125"])).returncode == 0:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the exec never started")
            else:
                await asyncio.sleep(0)  # the call is issued, its reply not yet seen
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                running = [e for e in await sb.execs() if e.running]
                left = await sb.exec(["pgrep", "-f", "sleep 1000.125"])
                if left.returncode == 1 and not running:
                    return True
                await asyncio.sleep(0.05)
            ps = (await sb.exec(["ps", "-eo", "pid,ppid,stat,args"])).stdout
            return f"{ps}\n{running}"

    left = asyncio.run(main())
    assert left is True, f"the cancelled exec's process is still running after 5 s:\n{left}"
