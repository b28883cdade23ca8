"""Hangar's Python SDK: isolated, disposable Linux sandboxes made from container images, with commands run
in them and their output streamed live, on the Rust SDK.

.. code-block:: python

    import asyncio
    from hangar_sandbox import Sandbox

    async def main():
        async with Sandbox(command="sleep", args=["infinity"]) as sb:
            r = await sb.exec(["python3", "-c", "print('hello')"], stream_output=True)
            print(r.returncode)

    asyncio.run(main())

Without ``HANGAR_URL`` the sandboxes run on this machine through an embedded engine (as root); with it,
on that Hangar server (``HANGAR_TOKEN`` is the bearer token). :mod:`hangar_sandbox.sync` is the same API
without asyncio; :mod:`aviato` offers the reference SDK's names.
"""

from ._sandbox import Client, ExecHandle, LogStream, Sandbox
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
    Usage,
)
from .errors import *  # noqa: F403
from .errors import __all__ as _errors

__all__ = [
    "Client",
    "Event",
    "ExecHandle",
    "ExecInfo",
    "ExecResult",
    "Exit",
    "Gap",
    "LogStream",
    "NetworkPolicy",
    "Output",
    "Sandbox",
    "SandboxInfo",
    "SandboxLog",
    "SandboxStatus",
    "Usage",
    *_errors,
]
