"""The ``jobsup`` command against a real daemon: output, --json documents, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.timeout(60)

JOB_ID = re.compile(r"^[0-9a-z]{1,64}$")


def jobsup(*args: str, input: str | None = None, env_extra: dict | None = None
           ) -> subprocess.CompletedProcess:
    """``python -m supervisord ARGS`` with no -c and no JOBSUP_* from the outer env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSUP_")}
    env.update(PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "supervisord", *args], capture_output=True,
                          text=True, input=input, timeout=60, cwd=ROOT, env=env)


def ok(res: subprocess.CompletedProcess, code: int = 0) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    return res.stdout


def one_id(res: subprocess.CompletedProcess) -> str:
    out = ok(res).strip()
    assert JOB_ID.match(out), out
    return out


# -- submit ------------------------------------------------------------------------------


def test_submit_prints_id(shared):
    jid = one_id(shared.cli("submit", "add", '{"a": 1, "b": 2}', "--priority", "3",
                            "--tag", "user=cli", "--tag", "team=x", "--max-attempts", "4"))
    with shared.client() as c:
        job = c.wait(jid, timeout=20)
    assert (job.status, job.result) == ("succeeded", 3)
    assert job.priority == 3
    assert job.max_attempts == 4
    assert job.tags == {"user": "cli", "team": "x"}


def test_submit_json_prints_id_document(shared):
    doc = json.loads(ok(shared.cli("submit", "noop", "--json")))
    assert JOB_ID.match(doc["id"])


def test_submit_key_is_idempotent(shared):
    first = one_id(shared.cli("submit", "echo", '{"n": 1}', "--key", "cli-key-1"))
    again = one_id(shared.cli("submit", "echo", '{"n": 2}', "--key", "cli-key-1"))
    assert first == again


def test_submit_wait_json_success(shared):
    out = ok(shared.cli("submit", "echo", '{"hello": "world"}', "--wait", "--json"))
    record = json.loads(out)
    assert record["status"] == "succeeded"
    assert record["result"] == {"hello": "world"}
    assert record["type"] == "echo"
    assert record["attempt"] == 1
    assert JOB_ID.match(record["id"])
    assert [h["status"] for h in record["history"]] == ["queued", "running", "succeeded"]


def test_submit_wait_failed_job_exits_1(shared):
    res = shared.cli("submit", "fail", '{"how": "permanent"}', "--wait", "--json")
    record = json.loads(ok(res, 1))
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "permanent"
    assert record["attempt"] == 1  # permanent: never retried
    res = shared.cli("submit", "fail", '{"how": "permanent"}', "--wait")
    assert res.returncode == 1
    assert "failed" in res.stdout
    assert "permanent" in res.stdout


def test_submit_reads_payload_from_stdin(shared):
    out = ok(shared.cli("submit", "echo", "-", "--wait", "--json",
                        input='{"from": "stdin", "n": [1, 2, 3]}\n'))
    assert json.loads(out)["result"] == {"from": "stdin", "n": [1, 2, 3]}


def test_submit_file_jsonl(shared, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"a": n, "b": 1}) + "\n" for n in range(20)) + "\n")
    out = ok(shared.cli("submit", "add", "--file", str(path)))
    ids = out.split()
    assert len(ids) == 20
    assert len(set(ids)) == 20
    assert all(JOB_ID.match(i) for i in ids)
    with shared.client() as c:
        jobs = c.wait_many(ids, timeout=30)
    assert [j.status for j in jobs] == ["succeeded"] * 20
    assert [j.result for j in jobs] == [n + 1 for n in range(20)]


# -- job, wait, cancel -------------------------------------------------------------------


def test_job_human_and_json(shared):
    jid = one_id(shared.cli("submit", "add", '{"a": 40, "b": 2}', "--tag", "user=show"))
    with shared.client() as c:
        c.wait(jid, timeout=20)
    out = ok(shared.cli("job", jid))
    assert jid in out
    assert "succeeded" in out
    assert "42" in out
    assert "user=show" in out
    lines = out.splitlines()
    timeline = lines[[ln.strip() for ln in lines].index("history") + 1:]
    assert [next(s for s in ("queued", "running", "succeeded") if s in ln)
            for ln in timeline] == ["queued", "running", "succeeded"]
    assert "submitted" in timeline[0]

    record = json.loads(ok(shared.cli("job", jid, "--json")))
    assert record["id"] == jid
    assert record["result"] == 42
    assert record["tags"] == {"user": "show"}
    assert record["worker"]["pid"] > 0
    assert record["finished_at"] >= record["started_at"] >= record["created_at"]


def test_job_unknown_id(shared):
    res = shared.cli("job", "doesnotexist0000")
    assert res.returncode != 0
    assert "doesnotexist0000" in res.stderr


def test_wait_success_and_timeout(shared):
    done = one_id(shared.cli("submit", "noop"))
    record = json.loads(ok(shared.cli("wait", done, "--timeout", "20", "--json")))
    assert record["status"] == "succeeded"
    assert "succeeded" in ok(shared.cli("wait", done))

    slow = one_id(shared.cli("submit", "sleep", '{"seconds": 30}'))
    try:
        res = shared.cli("wait", slow, "--timeout", "0.5")
        assert res.returncode == 1, res
        assert "not finished" in res.stderr or "time" in res.stderr
    finally:
        with shared.client() as c:
            c.cancel(slow)
            assert c.wait(slow, timeout=20).status == "cancelled"
    res = shared.cli("wait", slow)  # a cancelled job: exit 1 as well
    assert res.returncode == 1
    assert "cancelled" in res.stdout


def test_cancel_delayed_job(shared):
    jid = one_id(shared.cli("submit", "sleep", '{"seconds": 1}', "--delay", "60"))
    with shared.client() as c:
        assert c.get(jid).status == "scheduled"
    out = ok(shared.cli("cancel", jid))
    assert jid in out and "cancelled" in out
    record = json.loads(ok(shared.cli("job", jid, "--json")))
    assert record["status"] == "cancelled"
    assert record["error"]["kind"] == "cancelled"
    assert record["started_at"] is None
    res = shared.cli("wait", jid, "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["status"] == "cancelled"
    # Cancelling again is harmless and says what the job is.
    assert "cancelled" in ok(shared.cli("cancel", jid))


# -- listing -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_jobs_filters_newest_first(daemon):
    with daemon.client() as c:
        echo_ids = [c.submit("echo", {"n": n}) for n in range(7)]
        add_ids = [c.submit("add", {"a": n, "b": n}) for n in range(3)]
        c.wait_many(echo_ids + add_ids, timeout=30)
        cancelled = c.submit("echo", {"n": "late"}, delay=60)
        c.cancel(cancelled)

    docs = json.loads(ok(daemon.cli("jobs", "--status", "succeeded", "--type", "echo",
                                    "--limit", "5", "--json")))
    assert [d["id"] for d in docs] == echo_ids[::-1][:5]
    assert {(d["type"], d["status"]) for d in docs} == {("echo", "succeeded")}
    created = [d["created_at"] for d in docs]
    assert created == sorted(created, reverse=True)

    docs = json.loads(ok(daemon.cli("jobs", "--json")))
    assert [d["id"] for d in docs] == [cancelled, *add_ids[::-1], *echo_ids[::-1]]
    docs = json.loads(ok(daemon.cli("jobs", "--type", "echo", "--json")))
    assert [d["id"] for d in docs] == [cancelled, *echo_ids[::-1]]
    docs = json.loads(ok(daemon.cli("jobs", "--status", "cancelled", "--json")))
    assert [d["id"] for d in docs] == [cancelled]
    assert json.loads(ok(daemon.cli("jobs", "--status", "failed", "--json"))) == []

    table = ok(daemon.cli("jobs", "--type", "add"))
    lines = table.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "TYPE", "STATUS"]
    assert [ln.split()[0] for ln in lines[1:-1]] == add_ids[::-1]
    assert lines[-1] == "3 of 3"  # how many match


def test_jobs_tag_filter(shared):
    with shared.client() as c:
        u1 = [c.submit("noop", tags={"user": "u1", "n": str(n)}) for n in range(3)]
        u2 = [c.submit("noop", tags={"user": "u2"}) for _ in range(2)]
        c.wait_many(u1 + u2, timeout=20)
    docs = json.loads(ok(shared.cli("jobs", "--tag", "user=u1", "--json")))
    assert [d["id"] for d in docs] == u1[::-1]
    assert all(d["tags"]["user"] == "u1" for d in docs)
    docs = json.loads(ok(shared.cli("jobs", "--tag", "user=u2", "--limit", "1", "--json")))
    assert [d["id"] for d in docs] == [u2[-1]]
    assert json.loads(ok(shared.cli("jobs", "--tag", "user=nobody", "--json"))) == []
    res = shared.cli("jobs", "--tag", "user")
    assert res.returncode == 2
    assert "KEY=VALUE" in res.stderr


# -- status ------------------------------------------------------------------------------


def test_status_json_and_table(shared):
    st = json.loads(ok(shared.cli("status", "--json")))
    workers = st["workers"]
    assert len(workers) == 2
    for w in workers:
        assert {"pid", "pool", "state", "job", "rss"} <= set(w)
        assert w["pool"] == "default"
        assert w["pid"] > 0
        assert w["rss"] > 0
        assert w["state"] in ("idle", "busy", "starting")
    assert {p["name"] for p in st["pools"]} == {"default"}
    assert st["redis"]["up"] is True

    busy = one_id(shared.cli("submit", "sleep", '{"seconds": 30}'))
    try:
        def running() -> list:
            st = json.loads(ok(shared.cli("status", "--json")))
            return [w for w in st["workers"] if w["job"] == busy]
        [w] = wait_for(running, 20, 0.1, "the sleep job to show on a worker")
        assert w["state"] == "busy"
        table = ok(shared.cli("status"))
        assert "default" in table
        assert str(w["pid"]) in table
        assert busy in table
    finally:
        with shared.client() as c:
            c.cancel(busy)
            c.wait(busy, timeout=20)


# -- finding the daemon ----------------------------------------------------------------


def test_unreachable_daemon_exits_3():
    nowhere = "ipc:///nonexistent/path.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSUP_")}
    env["PYTHONPATH"] = str(ROOT)
    runs = [  # in parallel: each waits out the client's connect timeout
        ["--endpoint", nowhere, "status"],
        ["submit", "echo", "{}", "--endpoint", nowhere],
        ["job", "abc"],
    ]
    procs = [subprocess.Popen([sys.executable, "-m", "supervisord", *args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(env, JOBSUP_ENDPOINT=nowhere) if n == 2 else env)
             for n, args in enumerate(runs)]
    try:
        results = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [3, 3, 3], results
    for _, err in results:
        assert "nonexistent/path.sock" in err


def test_endpoint_option_and_env_without_config(shared):
    st = json.loads(ok(jobsup("--endpoint", shared.endpoint, "status", "--json")))
    assert st["node"] == "test-node"
    st = json.loads(ok(jobsup("status", "--json", "--endpoint", shared.endpoint)))
    assert st["node"] == "test-node"
    out = ok(jobsup("submit", "add", '{"a": 2, "b": 2}', "--wait", "--json",
                    env_extra={"JOBSUP_ENDPOINT": shared.endpoint}))
    assert json.loads(out)["result"] == 4
    # An explicit --endpoint wins over the environment.
    res = jobsup("--endpoint", shared.endpoint, "status", "--json",
                 env_extra={"JOBSUP_ENDPOINT": "ipc:///nonexistent/path.sock"})
    assert json.loads(ok(res))["node"] == "test-node"


def test_config_file_finds_endpoint(shared):
    st = json.loads(ok(jobsup("-c", str(shared.config), "status", "--json")))
    assert st["node"] == "test-node"
    st = json.loads(ok(jobsup("status", "-c", str(shared.config), "--json")))
    assert st["node"] == "test-node"


# -- mends: progress, dlq purge, Redis down, oversized requests ---------------------------


def test_job_shows_progress_only_when_the_handler_reported_it(shared):
    quiet = one_id(shared.cli("submit", "add", '{"a": 1, "b": 1}'))
    chatty = one_id(shared.cli("submit", "sleep", '{"seconds": 0.6}'))  # reports progress
    with shared.client() as c:
        c.wait_many([quiet, chatty], timeout=20)
        assert c.get(quiet).progressed is False and c.get(chatty).progressed is True
    assert "progress" not in ok(shared.cli("job", quiet))
    assert re.search(r"^progress\s+100%\s+step ", ok(shared.cli("job", chatty)), re.M)


def _dead_letters(d, n: int) -> list[str]:
    with d.client() as c:
        jobs = c.wait_many(c.submit_many("fail", [{"how": "permanent"}] * n), timeout=20)
    assert {j.status for j in jobs} == {"failed"}
    return [j.id for j in jobs]


def _on_terminal(d, args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdin and stdout, typing ``answer``."""
    import pty

    main, tty = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "supervisord", "-c", str(d.config), *args],
                            stdin=tty, stdout=tty, stderr=tty, cwd=ROOT, close_fds=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    os.close(tty)
    out = b""
    try:
        while b"[y/N]" not in out:
            chunk = os.read(main, 4096)
            assert chunk, out
            out += chunk
        os.write(main, answer.encode() + b"\n")
        code = proc.wait(30)
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            out += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(main)
    return code, out.decode(errors="replace")


def test_dlq_purge_asks_on_a_terminal_and_refuses_without_one(daemon):
    ids = _dead_letters(daemon, 3)
    # Not a terminal and no --yes: refused, nothing deleted.
    res = daemon.cli("dlq", "purge", input="y\n")
    assert res.returncode == 2, res
    assert "--yes" in res.stderr and "terminal" in res.stderr
    with daemon.client() as c:
        assert {j.id for j in c.dead_letters()} >= set(ids)
    code, out = _on_terminal(daemon, ["dlq", "purge"], "n")
    assert code == 1 and "delete all 3 job(s)" in out and "nothing purged" in out, out
    with daemon.client() as c:
        assert len(c.dead_letters()) == 3
    code, out = _on_terminal(daemon, ["dlq", "purge"], "y")
    assert code == 0 and "purged 3 job(s)" in out, out
    _dead_letters(daemon, 2)
    assert "purged 2 job(s)" in ok(daemon.cli("dlq", "purge", "--yes"))
    with daemon.client() as c:
        assert c.dead_letters() == []


@pytest.mark.timeout(90)
def test_status_with_redis_down_says_so_and_exits_3(daemon, redis_server):
    assert "dead letters 0" in ok(daemon.cli("status"))
    redis_server.stop()

    def down() -> bool:
        with daemon.client() as c:
            return not c.status()["redis"]["up"]
    wait_for(down, 30, 0.2, "the daemon to see Redis down")
    res = daemon.cli("status")
    assert res.returncode == 3, res
    assert "redis DOWN" in res.stdout and "None" not in res.stdout
    assert "Redis is down" in res.stderr
    assert "default" in res.stdout  # the pools are still shown
    res = daemon.cli("status", "--json")
    assert res.returncode == 3, res
    assert json.loads(res.stdout)["redis"]["up"] is False


def test_submit_over_the_message_limit_is_refused_before_sending(daemon_factory):
    d = daemon_factory(api={"max_message": "1MiB"},
                       jobs={"big": {"handler": "examples.demo:noop", "max_payload": "4MiB"}})
    huge = json.dumps({"blob": "x" * (2 * 1024 * 1024)})
    for how in (["-c", str(d.config)], ["--endpoint", d.endpoint]):  # limit known, or asked
        res = subprocess.run([sys.executable, "-m", "supervisord", *how, "submit", "big", "-"],
                             input=huge, capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert res.returncode == 2, res
        assert "Traceback" not in res.stderr
        assert "1,048,576 bytes (api.max_message)" in res.stderr and "nothing was sent" in \
            res.stderr, res.stderr
    with d.client() as c:
        assert c.jobs(type="big") == []
        assert c.wait(c.submit("big", {"blob": "x" * 1000}), timeout=20).status == "succeeded"
