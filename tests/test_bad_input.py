"""Bad input gets a clear error reply, writes nothing to Redis, and the daemon keeps serving.

API cases run against one daemon for the module (they must not disturb it, so
sharing it is part of the test); CLI cases run ``python -m supervisord``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from supervisord import errors
from supervisord.wire.api import PROTOCOL_VERSION
from tests.conftest import ROOT, Daemon, RedisServer

pytestmark = pytest.mark.timeout(60)

SMALL = {"handler": "examples.demo:echo", "timeout": 30, "max_payload": "1KiB"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, RedisServer]]:
    base = tmp_path_factory.mktemp("badinput")
    server = RedisServer(base / "redis")
    server.start()
    daemon = Daemon(base / "d", server.url, {"jobs": {"small": SMALL}})
    try:
        daemon.start()
        yield daemon, server
    finally:
        daemon.kill()
        server.stop()


@pytest.fixture
def daemon(env) -> Daemon:
    return env[0]


@pytest.fixture
def unchanged(env) -> Iterator[Callable[[], None]]:
    """Snapshot Redis; the returned check asserts no key was added or removed, and that
    the daemon then still runs a normal job."""
    d, server = env
    r = server.client()

    def snapshot() -> tuple[int, set[bytes], int]:
        return r.dbsize(), set(r.keys("*")), r.zcard("{jobsup}:idx:all")

    before = snapshot()

    def check() -> None:
        assert snapshot() == before, "bad input wrote to Redis"
        with d.client() as c:
            job = c.wait(c.submit("add", {"a": 20, "b": 22}), timeout=20)
        assert (job.status, job.result) == ("succeeded", 42)

    yield check
    r.close()


def raw(endpoint: str, *frames: bytes, timeout: float = 10.0) -> dict:
    """Send frames on a bare DEALER socket and decode the one-frame reply."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(list(frames))
        assert sock.poll(timeout * 1000), "no reply to a bad frame"
        reply = sock.recv_multipart()
        assert len(reply) == 1
        return msgpack.unpackb(reply[0], raw=False)
    finally:
        sock.close(linger=0)
        ctx.term()


def assert_error(reply: dict, code: str, *words: str) -> str:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply
    message = reply["error"]["message"]
    for word in words:
        assert word in message, (word, message)
    return message


# -- requests the client library can send --------------------------------------------


def test_unknown_job_type(daemon, unchanged):
    with daemon.client() as c, pytest.raises(errors.UnknownJobType) as info:
        c.submit("resize_typo", {"x": 1})
    assert info.value.code == "unknown_job_type"
    message = info.value.message
    assert "resize_typo" in message
    for known in ("add", "echo", "sleep", "small"):
        assert known in message
    with daemon.client() as c, pytest.raises(errors.UnknownJobType):
        c.submit_many("resize_typo", [{}, {}])
    unchanged()


def test_payload_over_max_payload(daemon, unchanged):
    with daemon.client() as c:
        with pytest.raises(errors.PayloadTooLarge) as info:
            c.submit("small", {"blob": "x" * 2000})
        assert info.value.code == "payload_too_large"
        assert isinstance(info.value, errors.ValidationError)
        assert "max_payload" in info.value.message
        assert "1024" in info.value.message
        # One oversized payload in a batch rejects the whole batch, naming its index.
        with pytest.raises(errors.PayloadTooLarge) as info:
            c.submit_many("small", [{"ok": 1}, {"blob": "x" * 2000}, {"ok": 3}])
        assert "payloads[1]" in info.value.message
    unchanged()
    with daemon.client() as c:  # under the limit is fine
        job = c.wait(c.submit("small", {"blob": "x" * 500}), timeout=20)
    assert job.status == "succeeded"


@pytest.mark.parametrize("fields,names", [
    ({"priority": "high"}, ["priority"]),
    ({"priority": 1.5}, ["priority"]),
    ({"max_attempts": 0}, ["max_attempts"]),
    ({"timeout": -1.0}, ["timeout"]),
    ({"tags": ["user", "u1"]}, ["tags"]),
    ({"tags": {"user": 5}}, ["tags"]),
    ({"priortiy": 3}, ["priortiy"]),  # unknown field: a typo is not silently dropped
])
def test_wrong_field_types(daemon, unchanged, fields, names):
    with daemon.client() as c, pytest.raises(errors.ValidationError) as info:
        c.call("submit", type="echo", payload={"x": 1}, **fields)
    assert info.value.code == "validation"
    for name in names:
        assert name in info.value.message
        assert any(name in e["loc"] for e in info.value.errors), info.value.errors
    unchanged()


def test_missing_required_field(daemon, unchanged):
    with daemon.client() as c, pytest.raises(errors.ValidationError) as info:
        c.call("submit", payload={"x": 1})
    assert "type" in info.value.message
    with daemon.client() as c, pytest.raises(errors.ValidationError) as info:
        c.call("get", id="../../etc/passwd")
    assert "id" in info.value.message
    unchanged()


def test_unknown_operation(daemon, unchanged):
    with daemon.client() as c, pytest.raises(errors.BadRequest) as info:
        c.call("frobnicate", id="x")
    assert "frobnicate" in info.value.message
    assert "submit" in info.value.message  # lists the known operations
    unchanged()


# -- frames only a broken or hostile client sends -------------------------------------


def _frame(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_protocol_version_mismatch(daemon, unchanged):
    reply = raw(daemon.endpoint, _frame({"v": 99, "op": "ping", "rid": 7}))
    message = assert_error(reply, "bad_request", "99")
    assert "version" in message
    assert reply["rid"] == 7
    reply = raw(daemon.endpoint, _frame({"v": 99, "op": "submit", "rid": 8, "type": "echo",
                                         "payload": {}}))
    assert_error(reply, "bad_request", "version")
    unchanged()


@pytest.mark.parametrize("frame,words", [
    (b"\xc1\xc1 this is not msgpack", ["msgpack"]),
    (_frame({"v": 1, "op": "submit", "type": "echo", "payload": {"x": "y" * 50}})[:-10],
     ["msgpack"]),
    (b"", ["msgpack"]),
    (_frame(["submit", "echo", {"x": 1}]), ["map"]),
    (_frame("submit"), ["map"]),
    (_frame({"v": 1, "rid": 3}), ["operation"]),
    (_frame({1: "int keys", "op": "ping"}), []),
], ids=["garbage", "truncated", "empty", "list", "string", "no-op", "int-keys"])
def test_malformed_frames(daemon, unchanged, frame, words):
    reply = raw(daemon.endpoint, frame)
    assert reply["v"] == PROTOCOL_VERSION
    assert_error(reply, "bad_request", *words)
    unchanged()


def _deep(levels: int) -> bytes:
    """A msgpack value nested ``levels`` arrays deep (msgpack's own encoder stops at 512)."""
    return b"\x91" * levels + b"\xc0"


def _map(**fields: bytes) -> bytes:
    """A msgpack map of already-encoded values."""
    return bytes([0x80 | len(fields)]) + b"".join(_frame(k) + v for k, v in fields.items())


def test_deeply_nested_payload_is_invalid_and_reads_keep_working(env):
    daemon, server = env
    r = server.client()
    stored = r.zcard("{jobsup}:idx:all")
    with daemon.client() as c:
        deep: list = []
        for _ in range(100):
            deep = [deep]
        with pytest.raises(errors.ValidationError) as info:
            c.submit("echo", {"x": deep})
        assert "64 levels" in info.value.message and "flatten" in info.value.message
        with pytest.raises(errors.ValidationError) as info:
            c.submit_many("echo", [{"ok": 1}, deep])
        assert "payloads[1]" in info.value.message
        assert r.zcard("{jobsup}:idx:all") == stored  # nothing was queued
        # The limit itself is allowed: 64 levels, counting the outer map.
        ok: Any = 1
        for _ in range(63):
            ok = [ok]
        allowed = c.submit("echo", {"x": ok})
        assert c.wait(allowed, timeout=20).status == "succeeded"
    # 1,023 levels, beyond what the client library can encode, on a bare socket.
    reply = raw(daemon.endpoint, _map(v=_frame(1), op=_frame("submit"), rid=_frame(5),
                                      type=_frame("echo"), payload=_deep(1023)))
    assert_error(reply, "validation", "64 levels")
    assert reply["rid"] == 5
    assert r.zcard("{jobsup}:idx:all") == stored + 1  # only the allowed job
    with daemon.client() as c:
        assert c.get(allowed).status == "succeeded"
        assert allowed in [j.id for j in c.jobs(limit=200)]
        assert c.wait(allowed, timeout=5).result == {"x": ok}
    r.close()


@pytest.mark.parametrize("field", ["op", "rid"])
def test_deeply_nested_op_or_rid_is_a_bad_request(daemon, unchanged, field):
    fields = {"v": _frame(1), "op": _frame("ping"), "rid": _frame(9)}
    fields[field] = _deep(1000)
    reply = raw(daemon.endpoint, _map(**fields))
    message = assert_error(reply, "bad_request", field)
    assert "internal" not in message
    with daemon.client() as c:
        assert c.ping()["node"]
    unchanged()


def test_multi_frame_message(daemon, unchanged):
    ping = _frame({"v": 1, "op": "ping", "rid": 1})
    reply = raw(daemon.endpoint, ping, ping)
    assert_error(reply, "bad_request", "frame")
    reply = raw(daemon.endpoint, _frame({"v": 1, "op": "submit", "type": "echo", "rid": 2}),
                b"extra", b"frames")
    assert_error(reply, "bad_request", "frame")
    unchanged()


def test_burst_of_garbage_then_normal_work(daemon, unchanged):
    for n in range(50):
        reply = raw(daemon.endpoint, os.urandom(64) + bytes([0xc1]) + bytes([n]))
        assert reply["ok"] is False
    unchanged()


# -- the CLI ---------------------------------------------------------------------------


def jobsup(*args: str, input: str | None = None, env_extra: dict | None = None
           ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSUP_")}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "supervisord", *args], capture_output=True,
                          text=True, input=input, timeout=30, cwd=ROOT, env=env)


def test_cli_invalid_json_payload(daemon, unchanged):
    res = daemon.cli("submit", "echo", "{not json")
    assert res.returncode == 2, res
    assert "not valid JSON" in res.stderr
    assert res.stdout == ""
    res = daemon.cli("submit", "echo", "-", input="[1, 2,")
    assert res.returncode == 2, res
    assert "not valid JSON" in res.stderr
    unchanged()


def test_cli_invalid_jsonl_file(daemon, unchanged, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"n": 1}\n{"n": 2\n')
    res = daemon.cli("submit", "echo", "--file", str(path))
    assert res.returncode == 2, res
    assert "jobs.jsonl:2" in res.stderr
    unchanged()


def test_cli_unknown_job_type_and_too_large(daemon, unchanged):
    res = daemon.cli("submit", "nope", "{}")
    assert res.returncode == 2, res
    assert "unknown job type 'nope'" in res.stderr
    res = daemon.cli("submit", "small", '{"blob": "' + "x" * 2000 + '"}')
    assert res.returncode == 2, res
    assert "max_payload" in res.stderr
    res = daemon.cli("submit", "echo", "{}", "--tag", "novalue")
    assert res.returncode == 2, res
    assert "KEY=VALUE" in res.stderr
    unchanged()


INVALID = """
[daemon]
node_id = "n1"

[[pools]]
name = "cpu"
workers = -1

[jobs.x]
timeout = 5

[jobs.y]
handler = "examples.demo:echo"
max_payload = "lots"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_check_invalid_file_lists_errors_with_paths(tmp_path):
    path = _write(tmp_path, "invalid.toml", INVALID)
    res = jobsup("config", "check", str(path))
    assert res.returncode == 2, res
    for loc in ("pools[0].workers", "jobs.x.handler", "jobs.y.max_payload"):
        assert loc in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3, res.stderr


def test_run_with_invalid_config_exits_2(tmp_path):
    path = _write(tmp_path, "invalid.toml", INVALID)
    res = jobsup("run", "-c", str(path))
    assert res.returncode == 2, res
    for loc in ("pools[0].workers", "jobs.x.handler", "jobs.y.max_payload"):
        assert loc in res.stderr, res.stderr
    res = jobsup("-c", str(path), "run")
    assert res.returncode == 2, res
    assert "pools[0].workers" in res.stderr


def test_config_check_valid_file(tmp_path):
    path = _write(tmp_path, "ok.toml", '[[pools]]\nname = "cpu"\nworkers = 2\n\n'
                  '[jobs.r]\nhandler = "examples.demo:echo"\nmax_payload = "1KiB"\n')
    res = jobsup("config", "check", str(path))
    assert res.returncode == 0, res
    assert "ok" in res.stdout
    example = ROOT / "etc" / "jobsup.example.toml"
    if example.exists():
        res = jobsup("config", "check", str(example))
        assert res.returncode == 0, res


def test_config_check_non_toml_file(tmp_path):
    path = _write(tmp_path, "not.toml", "{\n  \"this\": \"is json\"\n}\n")
    res = jobsup("config", "check", str(path))
    assert res.returncode == 2, res
    assert "not valid TOML" in res.stderr
    res = jobsup("config", "check", str(tmp_path / "missing.toml"))
    assert res.returncode == 2, res
    assert "does not exist" in res.stderr


def test_config_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, "typo.toml", '[daemon]\nshutdown_grase = 10\n\n'
                  '[[pools]]\nname = "cpu"\nwokers = 2\n')
    res = jobsup("config", "check", str(path))
    assert res.returncode == 2, res
    assert "daemon.shutdown_grase" in res.stderr
    assert "pools[0].wokers" in res.stderr
    path = _write(tmp_path, "section.toml", '[metrcs]\nlisten = "127.0.0.1:9700"\n')
    res = jobsup("config", "check", str(path))
    assert res.returncode == 2, res
    assert "metrcs" in res.stderr


def test_config_check_bad_reference_names_its_key(tmp_path):
    path = _write(tmp_path, "ref.toml", '[[pools]]\nname = "cpu"\n\n'
                  '[jobs.x]\nhandler = "examples.demo:echo"\npool = "gpu"\n')
    res = jobsup("config", "check", str(path))
    assert res.returncode == 2, res
    assert "  jobs.x.pool: " in res.stderr
    assert "'gpu'" in res.stderr


def test_config_check_imports_every_handler_init_and_schema_in_a_child(tmp_path):
    marker = tmp_path / "imported.txt"
    path = _write(tmp_path, "typos.toml", """
[[pools]]
name = "cpu"
workers = 1
init = "tests.handlers:no_such_init"

[jobs.ok]
handler = "tests.import_marker:handler"

[jobs.typo]
handler = "examples.demo:echoo"

[jobs.badschema]
handler = "examples.demo:echo"
schema = "examples.demo:echo"

[jobs.nomodule]
handler = "examples.nosuchmodule:run"
""")
    proc = subprocess.Popen([sys.executable, "-m", "supervisord", "config", "check", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT),
                                     JOBSUP_TEST_IMPORT_MARKER=str(marker)))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "4 error(s)" in err
    assert "pools[0].init: module 'tests.handlers' has no 'no_such_init'" in err
    assert "jobs.typo.handler: module 'examples.demo' has no 'echoo' (did you mean echo" in err
    assert "jobs.badschema.schema: examples.demo:echo is a function, not a pydantic model" in err
    assert "jobs.nomodule.handler: cannot import module 'examples.nosuchmodule'" in err
    # The handlers were imported, but by another process than the CLI.
    importers = marker.read_text().split()
    assert len(importers) == 1 and int(importers[0]) != proc.pid


def test_config_check_reports_key_errors_and_import_errors_together(tmp_path):
    path = _write(tmp_path, "both.toml", """
[[pools]]
name = "cpu"
workers = -1

[jobs.typo]
handler = "examples.demo:echoo"
""")
    res = jobsup("config", "check", str(path))
    assert res.returncode == 2, res
    assert "pools[0].workers" in res.stderr
    assert "jobs.typo.handler: module 'examples.demo' has no 'echoo'" in res.stderr
