"""A sandbox's log (its main command's output) through the Python SDK, on both backends: live, in the order
written, as it stands, by tail and offset, after the sandbox ended, in the sync facade, and gone with it."""

from __future__ import annotations

import asyncio
import time

import pytest

from hangar_sandbox import Exit, Gap, Output, SandboxLog, SandboxNotFoundError


def test_a_followed_log_is_live_and_ends_with_the_main_commands_end(backend):
    script = "echo one; echo two >&2; sleep 1; echo three; exit 5"

    async def main():
        async with backend.sandbox(command="sh", args=["-c", script]) as sb:
            arrivals, exit = [], None
            stream = await sb.stream_logs(follow=True)
            async for ev in stream:
                if isinstance(ev, Output):
                    arrivals.append((time.monotonic(), ev.stream, ev.offset, ev.data, time.time()))
                elif isinstance(ev, Exit):
                    exit = (time.monotonic(), ev)
                elif isinstance(ev, Gap):
                    pytest.fail(f"a gap in a short log: {ev}")
            for _ in range(200):
                if (await sb.info()).status.is_final:
                    break
                await asyncio.sleep(0.025)
            after = await sb.logs()
            tail = await sb.logs(tail_lines=1)
            rest = await sb.logs(from_offset=4)
            late = await sb.logs(since=arrivals[0][4] + 0.5)
            return arrivals, exit, stream.position, after, tail, rest, late

    arrivals, (ended_at, exit), position, after, tail, rest, late = asyncio.run(main())
    data = b"".join(a[3] for a in arrivals)
    assert data == b"one\ntwo\nthree\n", "stdout and stderr in the order written"
    assert {a[1] for a in arrivals} == {"stdout"}
    # "one" was written a second before the end: it must have arrived well before it.
    assert ended_at - arrivals[0][0] > 0.6, "the first lines arrived together with the end: not live"
    assert exit.ending == "exited" and exit.returncode == 5
    assert position == len(data)
    assert after == SandboxLog(data=data, gaps=[], exit=exit, next_offset=len(data))
    assert tail.text == "three\n" and rest.text == "two\nthree\n"
    assert late.text == "three\n", "since: what was written after the sleep began"


def test_a_log_as_it_stands_returns_at_once_and_goes_with_the_sandbox(backend):
    async def main():
        sb = backend.sandbox(command="sh", args=["-c", "seq 1 5; sleep infinity"])
        await sb.start()
        deadline = time.monotonic() + 10
        log = await sb.logs()
        while log.text != "1\n2\n3\n4\n5\n" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            log = await sb.logs()
        t0 = time.monotonic()
        again = await sb.logs(from_offset=log.next_offset)
        took = time.monotonic() - t0
        await sb.stop()
        stopped = await sb.logs()
        await sb.delete()
        try:
            await sb.logs()
            gone = "read"
        except SandboxNotFoundError as e:
            gone = str(e)
        return log, again, took, stopped, gone, sb.id

    log, again, took, stopped, gone, sid = asyncio.run(main())
    assert log.text == "1\n2\n3\n4\n5\n" and log.exit is None and log.complete
    assert again.text == "" and again.next_offset == log.next_offset and took < 5
    assert stopped.text == log.text and stopped.exit is not None, "the log outlives the sandbox's end"
    assert sid in gone


def test_the_sync_facade_reads_logs_too(backend):
    from hangar_sandbox import sync

    with sync.Sandbox(command="sh", args=["-c", "echo up; sleep 0.3"], client=backend.client) as sb:
        events = list(sb.stream_logs(follow=True))
        assert [e.data for e in events if isinstance(e, Output)] == [b"up\n"]
        assert isinstance(events[-1], Exit) and events[-1].returncode == 0
        assert sb.logs(tail_lines=1).text == "up\n"
