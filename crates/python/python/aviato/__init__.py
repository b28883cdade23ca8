"""The reference SDK's names on Hangar: code written for ``aviato`` runs unmodified.

.. code-block:: python

    from aviato import Sandbox, SandboxExecutionError, SandboxTimeoutError

    async with Sandbox(command="sleep", args=["infinity"], container_image="python:3.11") as sandbox:
        result = await sandbox.exec(["python", "train.py"], stream_output=True)
"""

from hangar_sandbox import *  # noqa: F403
from hangar_sandbox import __all__  # noqa: F401
