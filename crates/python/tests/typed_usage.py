"""Checked by mypy --strict in test_typing.py: the whole public API is typed for editors and type checkers."""

from __future__ import annotations

import asyncio

from hangar_sandbox import ExecHandle, ExecResult, Exit, Output, Sandbox, SandboxStatus, SandboxTimeoutError
from hangar_sandbox.sync import Sandbox as SyncSandbox


async def train(sb: Sandbox) -> int:
    r: ExecResult = await sb.exec(["python3", "train.py"], stream_output=True, timeout_seconds=30, check=True)
    try:
        await sb.exec(["sleep", "9"], timeout_seconds=0.1, on_stdout=lambda b: print(len(b)))
    except SandboxTimeoutError as e:
        assert e.exec_result is not None
        print(e.exec_result.stdout)
    h: ExecHandle = await sb.start_exec(["cat"], stdin=True)
    await h.write_stdin(b"x")
    await h.close_stdin()
    async for ev in h:
        if isinstance(ev, Output):
            print(ev.stream, ev.offset, len(ev.data))
        elif isinstance(ev, Exit):
            print(ev.returncode)
    status: SandboxStatus = await sb.get_status()
    data: bytes = await sb.read_file("out.txt")
    return r.returncode + len(data) + status.is_final


async def main() -> None:
    async with Sandbox(command="sleep", args=["infinity"], resources={"memory": "256Mi"}) as sb:
        await train(sb)
    for other in await Sandbox.list(tags=["nightly"]):
        await other.stop()


def sync_main() -> str:
    with SyncSandbox(command="sleep", args=["infinity"]) as sb:
        return sb.exec(["echo", "hi"]).stdout


if __name__ == "__main__":
    asyncio.run(main())
