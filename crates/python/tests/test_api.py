"""Lifecycle, listing, files, typed errors naming what failed, tenants, and the `aviato` names — on both
backends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

import hangar_sandbox
from hangar_sandbox import (
    CommandNotFoundError,
    Sandbox,
    SandboxExecutionError,
    SandboxFailedError,
    SandboxFileError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    SandboxStatus,
    SandboxValidationError,
)


def test_lifecycle_list_from_id_and_tags(backend):
    async def main():
        sb = backend.sandbox(
            command="sleep",
            args=["infinity"],
            environment_variables={"MODEL": "tiny"},
            tags={"team": "research"},
            resources={"cpu": "500m", "memory": "256Mi", "pids": 64},
            max_lifetime_seconds=600,
        )
        assert sb.id is None
        await sb.start()
        await sb.wait()
        info = await sb.info()
        env = await sb.exec(["sh", "-c", "echo $MODEL"])
        listed = [s.id for s in await Sandbox.list(tags={"team": "research"}, client=backend.client)]
        running = [s.id for s in await Sandbox.list(status="running", client=backend.client)]
        same = await Sandbox.from_id(sb.id, client=backend.client)
        same_status = await same.get_status()
        stopped = await sb.stop()
        after = await Sandbox.get(sb.id, client=backend.client)
        return sb, info, env, listed, running, same_status, stopped, await after.get_status()

    sb, info, env, listed, running, same_status, stopped, after = asyncio.run(main())
    assert info.status is SandboxStatus.RUNNING and info.tags == {"team": "research"}
    assert info.cpus == 0.5 and info.memory_bytes == 256 << 20 and info.pids == 64
    assert info.max_lifetime_seconds == 600 and info.command == ["sleep", "infinity"]
    assert env.stdout == "tiny\n"
    assert sb.id in listed and sb.id in running
    assert same_status is SandboxStatus.RUNNING
    assert stopped.status.is_final and after.is_final


def test_delete_forgets_the_sandbox(backend):
    async def main():
        sb = await backend.sandbox().start()
        await sb.delete()
        with pytest.raises(SandboxNotFoundError) as e:
            await Sandbox.from_id(sb.id, client=backend.client)
        return sb.id, e.value

    sid, err = asyncio.run(main())
    assert err.sandbox_id == sid and sid in str(err)


def test_files_binary_and_errors_name_the_path(backend):
    blob = bytes(range(256)) * 20480  # 5 MiB

    async def main():
        async with backend.sandbox() as sb:
            await sb.write_file("/work/data/blob.bin", blob)
            back = await sb.read_file("/work/data/blob.bin")
            digest = await sb.exec(["sha256sum", "/work/data/blob.bin"])
            with pytest.raises(SandboxFileError) as missing:
                await sb.read_file("/work/nope.txt")
            with pytest.raises(SandboxFileError) as directory:
                await sb.read_file("/work")
            return back, digest, missing.value, directory.value

    import hashlib

    back, digest, missing, directory = asyncio.run(main())
    assert back == blob and digest.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
    assert missing.filepath == "/work/nope.txt" and missing.reason == "FILE_NOT_FOUND" and "/work/nope.txt" in str(missing)
    assert directory.reason == "IS_A_DIRECTORY"


def test_typed_errors_name_what_failed(backend):
    async def main():
        errors = {}
        async with backend.sandbox() as sb:
            with pytest.raises(CommandNotFoundError) as e:
                await sb.exec(["no-such-program", "--x"])
            errors["command"] = e.value
            with pytest.raises(SandboxValidationError) as e:
                await sb.exec("echo hi")  # a string, not a list
            errors["string"] = e.value
            with pytest.raises(SandboxValidationError) as e:
                await sb.exec([])
            errors["empty"] = e.value
        with pytest.raises(SandboxNotRunningError) as e:
            await sb.exec(["true"])
        errors["stopped"] = e.value
        with pytest.raises(SandboxNotFoundError) as e:
            await Sandbox.from_id("sb-0000000000000000", client=backend.client)
        errors["missing"] = e.value
        with pytest.raises(SandboxFailedError) as e:
            await backend.sandbox(container_image="localhost:1/does-not-exist:1").start()
        errors["image"] = e.value
        with pytest.raises(SandboxValidationError) as e:
            backend.sandbox(resources={"memory": "lots"})
        errors["memory"] = e.value
        return sb.id, errors

    sid, errors = asyncio.run(main())
    assert "no-such-program" in str(errors["command"]) and isinstance(errors["command"], SandboxExecutionError)
    assert "['sh', '-c', 'echo hi']" in str(errors["string"])
    assert "argv" in str(errors["empty"]) or "command" in str(errors["empty"])
    assert errors["stopped"].sandbox_id == sid and errors["stopped"].status in ("terminated", "completed")
    assert errors["missing"].sandbox_id == "sb-0000000000000000"
    assert "does-not-exist" in str(errors["image"])
    assert "resources.memory" in str(errors["memory"]) and "lots" in str(errors["memory"])


@pytest.mark.parametrize("backend", ["remote"], indirect=True)  # tenants exist behind a server only
def test_a_second_tenant_sees_nothing_of_the_first(backend):

    async def main():
        async with backend.sandbox(tags={"owner": "alice"}) as sb:
            theirs = [s.id for s in await Sandbox.list(client=backend.other_tenant)]
            with pytest.raises(SandboxNotFoundError):
                await Sandbox.from_id(sb.id, client=backend.other_tenant)
            return sb.id, theirs

    sid, theirs = asyncio.run(main())
    assert sid not in theirs


def test_aviato_code_runs_unmodified(backend, python_image):
    """The reference guide's example, as written for `aviato`, on python:3.11."""
    script = textwrap.dedent(
        """
        import asyncio
        from aviato import Sandbox, SandboxExecutionError, SandboxTimeoutError

        async def main():
            async with Sandbox(command="sleep", args=["infinity"], container_image="python:3.11") as sandbox:
                await sandbox.write_file("train.py", "import sys\\nprint('epoch 1')\\nsys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)\\n")
                result = await sandbox.exec(["python", "train.py"], stream_output=True)
                print(f"Training complete! Exit code: {result.returncode}")
                try:
                    await sandbox.exec(["python", "train.py", "3"], on_stdout=lambda d: print("cb", d.decode().strip()), timeout_seconds=30, check=True)
                except SandboxExecutionError as e:
                    print(f"failed: {e.exec_result.returncode}")
                try:
                    await sandbox.exec(["sleep", "5"], timeout_seconds=0.5)
                except SandboxTimeoutError:
                    print("timed out")

        asyncio.run(main())
        """
    )
    p = subprocess.run([sys.executable, "-c", script], env=backend.env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "epoch 1\nTraining complete! Exit code: 0\ncb epoch 1\nfailed: 3\ntimed out\n"


def test_the_api_is_typed_and_exported():
    import aviato

    for name in ("Sandbox", "SandboxError", "SandboxTimeoutError", "SandboxExecutionError", "SandboxNotFoundError",
                 "SandboxNotRunningError", "SandboxFileError", "ExecResult"):
        assert getattr(aviato, name) is getattr(hangar_sandbox, name)
    from importlib.resources import files

    assert (files("hangar_sandbox") / "py.typed").is_file()
    assert (files("hangar_sandbox") / "_native.pyi").is_file()


def test_the_python_311_image_made_from_debian_packages(backend, python_image):
    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"], container_image=python_image) as sb:
            version = await sb.exec(["python", "--version"], check=True)
            pip = await sb.exec(["pip", "--version"], check=True)
            venv = await sb.exec(["sh", "-c", "python -m venv /tmp/v && /tmp/v/bin/python -c 'import sys; print(sys.prefix)'"], check=True)
            os_release = await sb.read_file("/etc/os-release")
            return version, pip, venv, os_release

    version, pip, venv, os_release = asyncio.run(main())
    assert version.stdout.startswith("Python 3.11.")
    assert "python 3.11" in pip.stdout
    assert venv.stdout == "/tmp/v\n"
    assert b'VERSION_CODENAME=bookworm' in os_release


def test_an_image_sandbox_without_a_command_idles_and_image_command_runs_the_images(backend, python_image):
    async def main():
        async with backend.sandbox(container_image="python:3.11") as sb:
            await asyncio.sleep(0.3)
            idle = (await sb.info()).status
            r = await sb.exec(["python", "-c", "print(6 * 7)"], check=True)
        own = backend.sandbox(container_image="python:3.11", image_command=True)
        await own.start()
        for _ in range(200):
            if (await own.info()).status.is_final:
                break
            await asyncio.sleep(0.025)
        info = await own.info()
        await own.delete()
        try:
            await backend.sandbox(container_image="python:3.11", image_command=True, command="true").start()
            both = "created"
        except SandboxValidationError as e:
            both = str(e)
        return idle, r.stdout, info, both

    idle, out, info, both = asyncio.run(main())
    assert idle == SandboxStatus.RUNNING and out == "42\n"
    assert info.command == ["python3"] and info.status == SandboxStatus.COMPLETED, info
    assert "image_command" in both
