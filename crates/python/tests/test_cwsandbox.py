"""CoreWeave's own client, `cwsandbox==1.22.0` from PyPI, unmodified, against `hangar serve`'s
`coreweave.sandbox.v1` (the same port, tokens and tenants as `hangar.v1`). Each flow runs in a child process
configured only by the client's two environment variables: lifecycle, streaming and unary exec, logs and
files (the rest of the API answers UNIMPLEMENTED naming the method). CoreWeave's own integration suite for
the client runs too: scripts/cwsandbox-suite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

LIFECYCLE = textwrap.dedent(
    """
    import json
    from cwsandbox import Sandbox, SandboxStatus
    sb = Sandbox(container_image="python:3.11", command="sleep", args=["infinity"], tags=["cw-test", "team=ml"],
                 resources={"cpu": "500m", "memory": "256Mi"}, max_lifetime_seconds=600,
                 environment_variables={"MODEL": "tiny"})
    sb.start().result()
    sb.wait()
    running = str(sb.get_status())
    listed = [s.sandbox_id for s in Sandbox.list(tags=["cw-test"]).result()]
    same = Sandbox.from_id(sb.sandbox_id).result()
    same_status = str(same.get_status())
    sb.stop().result()
    stopped = str(sb.get_status())
    after = str(Sandbox.from_id(sb.sandbox_id).result().get_status())
    ended = [s.sandbox_id for s in Sandbox.list(tags=["cw-test"], show_terminated=True).result()]
    live = [s.sandbox_id for s in Sandbox.list(tags=["cw-test"]).result()]
    print(json.dumps(dict(id=sb.sandbox_id, running=running, listed=listed, same=same_status, tags=list(sb.tags or []),
                          stopped=stopped, after=after, ended=ended, live=live)))
    """
)

ENDED = textwrap.dedent(
    """
    import json, time
    from cwsandbox import Sandbox
    from cwsandbox.exceptions import SandboxFailedError
    out = {}
    for name, code in (("ok", "exit 0"), ("bad", "sleep 0.5; exit 3")):
        sb = Sandbox(container_image="python:3.11", command="sh", args=["-c", code])
        sb.start().result()
        try:
            sb.wait()
            for _ in range(100):
                st = str(Sandbox.from_id(sb.sandbox_id).result().get_status())
                if st in ("completed", "failed", "terminated"):
                    break
                time.sleep(0.1)
            out[name] = st
        except SandboxFailedError as e:
            out[name] = "SandboxFailedError: " + str(e)
    print(json.dumps(out))
    """
)

ERRORS = textwrap.dedent(
    """
    import json
    from cwsandbox import Sandbox
    from cwsandbox.exceptions import SandboxNotFoundError, CWSandboxAuthenticationError
    out = {}
    try:
        Sandbox.from_id("sb-0000000000000000").result()
    except SandboxNotFoundError as e:
        out["missing"] = type(e).__name__
    print(json.dumps(out))
    """
)


THEIRS = textwrap.dedent(
    """
    import json, sys
    from cwsandbox import Sandbox
    from cwsandbox.exceptions import SandboxNotFoundError
    out = {"listed": [s.sandbox_id for s in Sandbox.list(show_terminated=True).result()]}
    try:
        Sandbox.from_id(sys.argv[1]).result()
        out["from_id"] = "found"
    except SandboxNotFoundError as e:
        out["from_id"] = type(e).__name__
    print(json.dumps(out))
    """
)


def cw_env(backend, token: str = "token-alice") -> dict[str, str]:
    env = {k: v for k, v in backend.env.items() if k not in ("HANGAR_URL", "HANGAR_TOKEN")}
    env.update(CWSANDBOX_BASE_URL=backend.env["HANGAR_URL"], CWSANDBOX_API_KEY=token, AWS_EC2_METADATA_DISABLED="true")
    return env


def run_client(script: str, env: dict[str, str], *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_cwsandbox_lifecycle_create_wait_list_from_id_stop(backend, python_image):
    r = run_client(LIFECYCLE, cw_env(backend))
    assert r["running"] == "running" and r["same"] == "running"
    assert r["id"] in r["listed"]
    assert sorted(r["tags"]) == ["cw-test", "team=ml"]
    assert r["stopped"] == "terminated" and r["after"] == "terminated"
    assert r["id"] in r["ended"] and r["id"] not in r["live"]


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_cwsandbox_sees_how_the_main_command_ended(backend, python_image):
    r = run_client(ENDED, cw_env(backend))
    assert r["ok"] == "completed"
    assert r["bad"] in ("failed",) or (
        r["bad"].startswith("SandboxFailedError") and "exited with code 3" in r["bad"]
    ), r


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_cwsandbox_errors_and_tenants(backend, python_image):
    assert run_client(ERRORS, cw_env(backend)) == {"missing": "SandboxNotFoundError"}
    mine = run_client(LIFECYCLE, cw_env(backend))
    theirs = run_client(THEIRS, cw_env(backend, "token-bob"), mine["id"])
    assert mine["id"] not in theirs["listed"]
    assert theirs["from_id"] == "SandboxNotFoundError"


RAW = textwrap.dedent(
    """
    import json, os, grpc
    from cwsandbox._proto import sandbox_pb2 as pb, sandbox_pb2_grpc as rpc
    target = os.environ["CWSANDBOX_BASE_URL"].removeprefix("http://")
    auth = [("authorization", "Bearer " + os.environ["CWSANDBOX_API_KEY"])]
    stub = rpc.SandboxServiceStub(grpc.insecure_channel(target))
    out = {}
    for name, call in [
        ("ConnectSandbox", lambda: stub.ConnectSandbox(pb.ConnectSandboxRequest(sandbox_id="sb-0000000000000000"), metadata=auth)),
        ("PurgeSandboxes", lambda: stub.PurgeSandboxes(pb.PurgeSandboxesRequest(), metadata=auth)),
        ("GetSandbox without a token", lambda: stub.GetSandbox(pb.GetSandboxRequest(sandbox_id="sb-0000000000000000"))),
    ]:
        try:
            call()
            out[name] = "OK"
        except grpc.RpcError as e:
            out[name] = [e.code().name, e.details()]
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_connect_sandbox_and_the_rest_answer_unimplemented_naming_the_method(backend):
    r = run_client(RAW, cw_env(backend))
    assert r["ConnectSandbox"][0] == "UNIMPLEMENTED", r  # never NOT_FOUND or UNAUTHENTICATED: clients fall back
    assert r["PurgeSandboxes"][0] == "UNIMPLEMENTED" and "PurgeSandboxes" in r["PurgeSandboxes"][1], r
    assert r["GetSandbox without a token"][0] == "UNAUTHENTICATED", r


EXEC = textwrap.dedent(
    """
    import json, time
    from cwsandbox import Sandbox
    from cwsandbox.exceptions import SandboxExecutionError, SandboxTimeoutError
    out = {}
    with Sandbox(container_image="python:3.11", command="sleep", args=["infinity"]) as sb:
        sb.wait()
        t0 = time.monotonic()
        code = "import sys, time\\nfor i in range(4):\\n    print(f'tick {i}', flush=True)\\n    time.sleep(0.3)\\nprint('warn', file=sys.stderr)"
        p = sb.exec(["python", "-c", code])
        arrivals = []
        for line in p.stdout:
            arrivals.append([round(time.monotonic() - t0, 2), line])
        r = p.result()
        out["stream"] = dict(arrivals=arrivals, rc=r.returncode, stdout=r.stdout, stderr=r.stderr)
        try:
            sb.exec(["sh", "-c", "echo nope >&2; exit 3"], check=True).result()
        except SandboxExecutionError as e:
            out["check"] = [e.exec_result.returncode, e.exec_result.stderr]
        t0 = time.monotonic()
        try:
            sb.exec(["sh", "-c", "echo started; exec sleep 1000.25"], timeout_seconds=1).result()
            out["timeout"] = "finished"
        except SandboxTimeoutError as e:
            out["timeout"] = type(e).__name__
        out["timeout_took"] = round(time.monotonic() - t0, 2)
        time.sleep(0.5)
        out["left"] = sb.exec(["sh", "-c", "pgrep -f 'sleep 1000.25' || true"]).result().stdout
        p = sb.exec(["python", "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin=True)
        p.stdin.write(b"hello ").result()
        p.stdin.write(b"world").result()
        p.stdin.close().result()
        out["stdin"] = p.result().stdout
        out["missing"] = [(r := sb.exec(["no-such-program"]).result()).returncode, r.stderr]
        out["env"] = sb.exec(["sh", "-c", "cd /tmp && pwd"], cwd="/tmp").result().stdout
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_cwsandbox_exec_streams_live_checks_times_out_and_feeds_stdin(backend, python_image):
    r = run_client(EXEC, cw_env(backend))
    s = r["stream"]
    assert [line for _, line in s["arrivals"]] == [f"tick {i}\n" for i in range(4)], s
    times = [t for t, _ in s["arrivals"]]
    assert max(times) - min(times) > 0.6, f"output arrived together, not live: {s}"
    assert s["rc"] == 0 and s["stderr"] == "warn\n"
    assert r["check"] == [3, "nope\n"]
    assert r["timeout"] == "SandboxTimeoutError" and r["timeout_took"] < 10
    assert r["left"] == "", f"the timed-out command's tree survived: {r['left']}"
    assert r["stdin"] == "dlrow olleh\n"
    assert r["missing"][0] == 127 and "no-such-program" in r["missing"][1]
    assert r["env"] == "/tmp\n"


FILES = textwrap.dedent(
    """
    import hashlib, json, os
    from cwsandbox import Sandbox
    from cwsandbox.exceptions import SandboxFileError
    blob = os.urandom(5 << 20)
    out = {}
    with Sandbox(container_image="python:3.11", command="sleep", args=["infinity"]) as sb:
        sb.wait()
        sb.write_file("/work/data/blob.bin", blob).result()
        back = sb.read_file("/work/data/blob.bin").result()
        out["same"] = back == blob
        out["sha"] = sb.exec(["sha256sum", "/work/data/blob.bin"]).result().stdout.split()[0] == hashlib.sha256(blob).hexdigest()
        try:
            sb.read_file("/work/missing.txt").result()
            out["missing"] = "read"
        except SandboxFileError as e:
            out["missing"] = [type(e).__name__, e.filepath, e.reason, e.metadata.get("filepath")]
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_cwsandbox_files_binary_and_typed_errors(backend, python_image):
    r = run_client(FILES, cw_env(backend))
    assert r["same"] and r["sha"], r
    assert r["missing"][0] == "SandboxFileError" and r["missing"][2] == "CWSANDBOX_FILE_NOT_FOUND", r
    assert r["missing"][1] == r["missing"][3] == "/work/missing.txt", r


LOGS = textwrap.dedent(
    """
    import json, os, time, grpc
    from cwsandbox import Sandbox
    from cwsandbox._proto import sandbox_pb2 as pb, sandbox_pb2_grpc as rpc
    producer = "import sys, time\\nprint('starting', file=sys.stderr, flush=True)\\nfor i in range(12):\\n    print(f'line-{i:02d}', flush=True)\\n    time.sleep(0.15)\\ntime.sleep(1000)"
    out = {}
    sb = Sandbox(container_image="python:3.11", command="python", args=["-c", producer])
    sb.start().result()
    sb.wait()
    t0 = time.monotonic()
    arrivals = []
    reader = sb.stream_logs(follow=True)
    for line in reader:
        arrivals.append([round(time.monotonic() - t0, 2), line])
        if line.startswith("line-05"):
            break
    reader.close()
    out["follow"] = arrivals
    time.sleep(1.5)
    t0 = time.monotonic()
    out["now"] = list(sb.stream_logs())
    out["now_took"] = round(time.monotonic() - t0, 2)
    out["tail"] = list(sb.stream_logs(tail_lines=2))
    target = os.environ["CWSANDBOX_BASE_URL"].removeprefix("http://")
    auth = [("authorization", "Bearer " + os.environ["CWSANDBOX_API_KEY"])]
    stub = rpc.SandboxServiceStub(grpc.insecure_channel(target))
    frames = [(e.log_session_id, e.next_log_offset, e.data.decode()) for e in stub.StreamLogs(pb.StreamLogsRequest(sandbox_id=sb.sandbox_id), metadata=auth)]
    out["frames"] = frames
    session, offset = frames[0][0], frames[0][1]
    rest = stub.StreamLogs(pb.StreamLogsRequest(sandbox_id=sb.sandbox_id, resume_log_session_id=session, resume_log_offset=offset), metadata=auth)
    out["resumed"] = "".join(e.data.decode() for e in rest)
    bad = next(iter(stub.StreamLogs(pb.StreamLogsRequest(sandbox_id=sb.sandbox_id, follow=True, resume_log_session_id="nope", resume_log_offset=3), metadata=auth)))
    out["bad_session"] = [bad.error.code, bad.error.message]
    past = next(iter(stub.StreamLogs(pb.StreamLogsRequest(sandbox_id=sb.sandbox_id, resume_log_session_id=session, resume_log_offset=1 << 40), metadata=auth)))
    out["past"] = past.error.code
    out["stamped"] = list(sb.stream_logs(timestamps=True))
    from datetime import datetime
    t6 = datetime.fromisoformat(out["stamped"][7].split(" ", 1)[0])
    out["since"] = list(sb.stream_logs(since_time=t6))
    sb.stop().result()
    out["after_stop"] = list(sb.stream_logs())
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_cwsandbox_stream_logs_live_as_it_stands_tail_resume_and_after_stop(backend, python_image):
    r = run_client(LOGS, cw_env(backend))
    lines = [line for _, line in r["follow"]]
    assert lines == ["starting\n"] + [f"line-{i:02d}\n" for i in range(6)], r["follow"]
    times = [t for t, _ in r["follow"]]
    assert times[-1] - times[1] > 0.45, f"the log arrived together, not live: {r['follow']}"
    everything = ["starting\n"] + [f"line-{i:02d}\n" for i in range(12)]
    assert r["now"] == everything, r["now"]  # stdout and stderr in the order written, then the call ends
    assert r["now_took"] < 5
    assert r["tail"] == everything[-2:]
    # Every frame: the same session, the offset after its bytes.
    offsets = [o for _, o, _ in r["frames"]]
    assert len({s for s, _, _ in r["frames"]}) == 1 and r["frames"][0][0]
    assert offsets == [sum(len(d.encode()) for _, _, d in r["frames"][: i + 1]) for i in range(len(r["frames"]))]
    text = "".join(d for _, _, d in r["frames"])
    assert text == "".join(everything)
    assert r["resumed"] == text[r["frames"][0][1]:], "a resume gives exactly the bytes after its offset"
    assert r["bad_session"][0] == "SESSION_NOT_FOUND" and "nope" in r["bad_session"][1]
    assert r["past"] == "INVALID_RESUME_OFFSET"
    # Each line stamped with when it was written (they came 0.15 s apart), in RFC 3339.
    from datetime import datetime

    stamps = [datetime.fromisoformat(line.split(" ", 1)[0]) for line in r["stamped"]]
    assert [line.split(" ", 1)[1] for line in r["stamped"]] == everything, r["stamped"]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps[1:], stamps[2:])]
    assert all(0.1 < g < 1.0 for g in gaps), gaps
    assert r["since"] == everything[7:], "since_time starts at the first line written at or after it"
    assert r["after_stop"] == everything, "an ended sandbox's log is still there"


UNARY = textwrap.dedent(
    """
    import json, os, time, grpc
    from cwsandbox import Sandbox
    from cwsandbox._proto import sandbox_pb2 as pb, sandbox_pb2_grpc as rpc
    target = os.environ["CWSANDBOX_BASE_URL"].removeprefix("http://")
    auth = [("authorization", "Bearer " + os.environ["CWSANDBOX_API_KEY"])]
    stub = rpc.SandboxServiceStub(grpc.insecure_channel(target))
    out = {}
    with Sandbox(container_image="python:3.11", command="sleep", args=["infinity"]) as sb:
        sb.wait()
        def run(cmd, **kw):
            r = stub.Exec(pb.ExecRequest(sandbox_id=sb.sandbox_id, command=cmd, **kw), metadata=auth, timeout=kw.pop("t", None) or 30)
            return [r.stdout.decode(), r.stderr.decode(), r.exit_code, r.stdout_truncated, r.stdout_bytes_produced]
        out["capped"] = run(["sh", "-c", "printf 'hello world!'; echo err >&2; exit 4"], max_output_bytes=5)
        out["env"] = run(["sh", "-c", "echo $GREETING"], env={"GREETING": "hi"})
        out["missing"] = run(["no-such-program"])
        t0 = time.monotonic()
        try:
            stub.Exec(pb.ExecRequest(sandbox_id=sb.sandbox_id, command=["sleep", "1000.5"]), metadata=auth, timeout=1)
            out["timeout"] = "finished"
        except grpc.RpcError as e:
            out["timeout"] = e.code().name
        out["took"] = round(time.monotonic() - t0, 2)
        time.sleep(0.5)
        out["left"] = run(["sh", "-c", "pgrep -f 'sleep 1000.5' || true"])[0]
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("backend", ["remote"], indirect=True)
def test_coreweave_unary_exec_caps_output_and_times_out_with_its_deadline(backend, python_image):
    r = run_client(UNARY, cw_env(backend))
    assert r["capped"] == ["hello", "err\n", 4, True, 12], r
    assert r["env"][0] == "hi\n"
    assert r["missing"][2] == 127 and "no-such-program" in r["missing"][1]
    assert r["timeout"] == "DEADLINE_EXCEEDED" and r["took"] < 5
    assert r["left"] == "", "the timed-out command's tree was killed"
