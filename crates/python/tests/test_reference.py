"""The patterns of the reference SDK's guide, each on both backends, with the output checked for content and
for arriving live (arrival times), not only at the end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import py, spread

from hangar_sandbox import SandboxExecutionError, SandboxTimeoutError

TICKS = "import time\nfor i in range(5):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.25)\n"


def test_print_through_shows_lines_while_the_command_runs(backend):
    """stream_output=True: a child process's real stdout (a pipe read here) gets each line as it is printed."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from hangar_sandbox import Sandbox
        async def main():
            async with Sandbox(command="sleep", args=["infinity"]) as sb:
                r = await sb.exec({py(TICKS)!r}, stream_output=True)
                print(f"exit {{r.returncode}}", flush=True)
        asyncio.run(main())
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=backend.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    arrivals = []
    for raw in child.stdout:
        arrivals.append((time.monotonic(), raw.decode().rstrip("\n")))
    assert child.wait(60) == 0, child.stderr.read().decode()
    lines = [l for _, l in arrivals]
    assert lines == [f"tick {i}" for i in range(5)] + ["exit 0"]
    ticks = [t for t, l in arrivals if l.startswith("tick")]
    assert spread(ticks) > 0.75, f"lines arrived together, not live: {arrivals}"


def test_callbacks_into_a_logger(backend):
    records: list[tuple[float, str, str]] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((time.monotonic(), record.levelname, record.getMessage()))

    log = logging.getLogger(f"train-{backend.name}")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)
    code = TICKS + "import sys\nprint('warning: lr high', file=sys.stderr)\n"

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            return await sb.exec(
                py(code),
                on_stdout=lambda data: log.info(data.decode()),
                on_stderr=lambda data: log.error(data.decode()),
            )

    r = asyncio.run(main())
    assert r.returncode == 0
    infos = [m for _, lvl, m in records if lvl == "INFO"]
    assert "".join(infos) == "".join(f"tick {i}\n" for i in range(5)) == r.stdout
    # (`python3 -u` prints the line and its newline in two writes: one chunk or two, as they were read.)
    assert "".join(m for _, lvl, m in records if lvl == "ERROR") == "warning: lr high\n" == r.stderr
    assert spread([t for t, lvl, _ in records if lvl == "INFO"]) > 0.75


def test_progress_counter_over_pip_install(backend):
    """pip install -r requirements.txt with a local-only requirement (no index: nothing leaves the machine)."""
    setup = "from setuptools import setup\nsetup(name='localpkg', version='1.0', py_modules=['localpkg'])\n"
    lines = 0

    def count(_line: str) -> None:
        nonlocal lines
        lines += 1

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            await sb.write_file("/work/localpkg/setup.py", setup)
            await sb.write_file("/work/localpkg/localpkg.py", "ANSWER = 42\n")
            await sb.write_file("/work/requirements.txt", "./localpkg\n")
            r = await sb.exec(
                ["python3", "-m", "pip", "install", "--no-index", "--no-build-isolation", "-r", "requirements.txt"],
                cwd="/work",
                env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                on_stdout_line=count,
                timeout_seconds=120,
                check=True,
            )
            check = await sb.exec(["python3", "-c", "import localpkg; print(localpkg.ANSWER)"], cwd="/", check=True)
            return r, check

    r, check = asyncio.run(main())
    assert lines == r.stdout.count("\n") + (0 if r.stdout.endswith("\n") or not r.stdout else 1)
    assert lines >= 2 and "Successfully installed localpkg" in r.stdout
    assert check.stdout == "42\n"


def test_stdout_and_stderr_into_two_files_byte_exact(backend, tmp_path):
    code = "import sys\nfor i in range(20000):\n    print(f'out {i}')\n    print(f'err {i}', file=sys.stderr)\n"
    out_path, err_path = tmp_path / "out.log", tmp_path / "err.log"

    async def main():
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
                return await sb.exec(["python3", "-c", code], on_stdout=out.write, on_stderr=err.write)

    r = asyncio.run(main())
    assert out_path.read_bytes() == "".join(f"out {i}\n" for i in range(20000)).encode() == r.stdout_bytes
    assert err_path.read_bytes() == "".join(f"err {i}\n" for i in range(20000)).encode() == r.stderr_bytes


def test_json_metrics_parsed_live(backend):
    code = "import json, time\nfor step in range(4):\n    print(json.dumps({'step': step, 'loss': 1 / (step + 1)}), flush=True)\n    time.sleep(0.3)\n"
    metrics: list[tuple[float, dict]] = []

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            return await sb.exec(py(code), on_stdout_line=lambda line: metrics.append((time.monotonic(), json.loads(line))))

    r = asyncio.run(main())
    assert r.returncode == 0
    assert [m for _, m in metrics] == [{"step": s, "loss": 1 / (s + 1)} for s in range(4)]
    assert spread([t for t, _ in metrics]) > 0.6


def test_timeout_keeps_partial_output_and_kills_the_tree(backend):
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '1000'])\nprint('halfway', flush=True)\ntime.sleep(1000)\n"

    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            t0 = time.monotonic()
            with pytest.raises(SandboxTimeoutError) as e:
                await sb.exec(py(code), timeout_seconds=1)
            took = time.monotonic() - t0
            left = await sb.exec(["pgrep", "-f", "sleep 1000"])
            return e.value, took, left

    err, took, left = asyncio.run(main())
    assert err.exec_result.stdout == "halfway\n"
    assert err.exec_result.ending == "timed_out" and err.timeout_seconds == 1
    assert took < 10
    assert left.returncode == 1 and left.stdout == "", f"processes of the timed-out exec survived: {left.stdout}"


def test_check_errors_carry_the_result(backend):
    async def main():
        async with backend.sandbox(command="sleep", args=["infinity"]) as sb:
            with pytest.raises(SandboxExecutionError) as e:
                await sb.exec(["sh", "-c", "echo working; echo 'no such dataset' >&2; exit 3"], check=True)
            return e.value

    err = asyncio.run(main())
    assert err.exec_result.returncode == 3
    assert err.exec_result.stderr == "no such dataset\n" and err.exec_result.stdout == "working\n"
    assert "exit code 3" in str(err) and "no such dataset" in str(err)
