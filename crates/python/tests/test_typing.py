"""The package ships its types (py.typed, the native module's .pyi): mypy --strict accepts a program using the
whole API and the package itself, and catches a misuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", *args], capture_output=True, text=True)


def test_mypy_strict_accepts_the_api_and_rejects_misuse(tmp_path):
    for args in ([str(HERE / "typed_usage.py")], ["-p", "hangar_sandbox", "-p", "aviato"]):
        ok = mypy(*args)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from hangar_sandbox import Sandbox\n"
        "async def f(sb: Sandbox) -> int:\n"
        "    return await sb.read_file('x')\n"
    )
    rejected = mypy(str(bad))
    assert rejected.returncode == 1 and 'incompatible return value type (got "bytes", expected "int")' in rejected.stdout.lower()
