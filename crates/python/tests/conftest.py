"""Fixtures: every test runs on both backends — the embedded engine in this process, and a real
`hangar serve` on 127.0.0.1 that this session starts (and stops, by its PID) with two tenants.

The binaries come from the workspace's `target/debug` (scripts/test builds them) or `HANGAR_BIN` /
`HANGAR_AGENT_BIN`; the tests run as root, since they start real sandboxes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hangar_sandbox import Client, Sandbox

ROOT = Path(__file__).resolve().parents[3]


def binary(env: str, name: str) -> str:
    path = Path(os.environ.get(env) or ROOT / "target" / "debug" / name)
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `cargo build -p hangar-cli` (or set {env})", pytrace=False)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """One backend: a client for it, and the environment a child process needs to reach the same one."""

    def __init__(self, name: str, client: Client, env: dict[str, str], other_tenant: Client | None = None):
        self.name = name
        self.state_dir = env["HANGAR_STATE_DIR"] if "HANGAR_STATE_DIR" in env else None
        self.client = client
        self.env = env
        self.other_tenant = other_tenant

    def sandbox(self, **kwargs) -> Sandbox:
        return Sandbox(client=self.client, **kwargs)


async def stop_all(client: Client) -> None:
    for sb in await Sandbox.list(client=client, include_stopped=False):
        await sb.stop(grace_seconds=0)


@pytest.fixture(scope="session")
def agent_bin() -> str:
    return binary("HANGAR_AGENT_BIN", "hangar-agent")


@pytest.fixture(scope="session", params=["embedded", "remote"])
def backend(request, tmp_path_factory, agent_bin):
    state = tmp_path_factory.mktemp(f"state-{request.param}")
    base = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    base["HANGAR_AGENT_BIN"] = agent_bin
    if request.param == "embedded":
        os.environ["HANGAR_AGENT_BIN"] = agent_bin
        env = {**base, "HANGAR_STATE_DIR": str(state)}
        b = Backend("embedded", Client.embedded(str(state)), env)
        yield b
        asyncio.run(stop_all(b.client))
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {**base, "HANGAR_STATE_DIR": str(state), "HANGAR_SERVER_TOKENS": "alice=token-alice,bob=token-bob"}
    log = open(state / "server.log", "wb")
    server = subprocess.Popen(
        [binary("HANGAR_BIN", "hangar"), "serve", "--listen", f"127.0.0.1:{port}"],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                pytest.fail(f"hangar serve exited with {server.returncode}: {(state / 'server.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("hangar serve did not listen within 30 s")
                time.sleep(0.05)
        env = {**base, "HANGAR_URL": url, "HANGAR_TOKEN": "token-alice"}
        b = Backend("remote", Client.connect(url, "token-alice"), env, other_tenant=Client.connect(url, "token-bob"))
        b.state_dir = str(state)
        yield b
        asyncio.run(stop_all(b.client))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="session")
def python_image_archive() -> str:
    """The `python:3.11` archive that scripts/python-image makes from Debian's packages (scripts/test does)."""
    path = Path(os.environ.get("HANGAR_TEST_PYTHON_IMAGE") or ROOT / "target" / "images" / "python-3.11.tar")
    if not path.is_file():
        pytest.fail(f"{path} is missing: make it with `scripts/python-image {path}`", pytrace=False)
    return str(path)


@pytest.fixture(scope="session")
def python_image(backend, python_image_archive) -> str:
    """`python:3.11`, imported into the backend's image store (the server's state directory for remote)."""
    env = {**backend.env, "HANGAR_STATE_DIR": backend.state_dir}
    env.pop("HANGAR_URL", None)
    subprocess.run([binary("HANGAR_BIN", "hangar"), "images", "import", python_image_archive], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return "python:3.11"


def py(code: str) -> list[str]:
    """argv running Python code in the sandbox, unbuffered."""
    return ["python3", "-u", "-c", code]


def spread(times: list[float]) -> float:
    return max(times) - min(times) if times else 0.0
