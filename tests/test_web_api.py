"""The HTTP side: a real daemon, its real web process, plain HTTP over loopback.

The web process is a child of the master (``python -m supervisord.web.server``)
that serves ``metrics.listen``; these tests talk to it with http.client and raw
sockets only, and check what an operator sees: every endpoint, health and
readiness while Redis or the master is stopped, the event stream with replay,
restarts, clean-up, actions and their token, and bad input of every kind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import time
from typing import Any

import psutil
import pytest

from tests.conftest import gone, scrape_metrics, wait_for

TOKEN = "t0ken-for-the-tests-only-1234567890"


def request(port: int, path: str, method: str = "GET", body: Any = None,
            headers: dict | None = None, timeout: float = 10.0
            ) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(port: int, path: str, **kw: Any) -> tuple[int, Any]:
    status, headers, body = request(port, path, **kw)
    assert headers["content-type"].startswith("application/json"), (path, headers, body)
    return status, json.loads(body)


def web_pid(daemon) -> int | None:
    for proc in psutil.Process(daemon.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "supervisord.web.server" in " ".join(proc.cmdline()):
                return proc.pid
    return None


def port_of(daemon) -> int:
    with daemon.client() as c:
        return c.status()["metrics_port"]


class Stream:
    """An event-stream client on a raw socket: it reads only when asked to."""

    def __init__(self, port: int, path: str = "/api/events", headers: dict | None = None,
                 rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        self.buf = b""

    def head(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The status code and the rest of the headers."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return int(head.split()[1]), head

    def messages(self, timeout: float = 10.0):
        """SSE messages as dicts (comments as {"comment": text}) until ``timeout``.
        The body is chunked: chunk-size lines are skipped (SSE lines never look like
        bare hex here, since each holds a colon)."""
        deadline = time.monotonic() + timeout
        pending: dict = {}
        while time.monotonic() < deadline:
            while b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                text = line.decode().rstrip("\r")
                if text == "":
                    if pending:
                        yield pending
                        pending = {}
                    continue
                if ":" not in text:
                    continue  # a chunk-size line
                if text.startswith(":"):
                    yield {"comment": text[1:].strip()}
                    continue
                key, _, value = text.partition(":")
                pending[key] = value.strip()
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return
            if not chunk:
                return
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def events_until(stream: Stream, done, timeout: float = 20.0) -> list[dict]:
    seen = []
    for msg in stream.messages(timeout):
        seen.append(msg)
        if done(msg):
            return seen
    raise AssertionError(f"not seen within {timeout}s; got {seen[-10:]}")


def data(msg: dict) -> dict:
    return json.loads(msg["data"])


@pytest.mark.timeout(90)
def test_every_read_endpoint(daemon_factory):
    d = daemon_factory(jobs={"talk": {"handler": "tests.handlers_output:talk",
                                      "timeout": 30}})
    port = port_of(d)
    with d.client() as c:
        said = c.submit("talk")
        c.wait(said, timeout=20)
        ok = c.submit("sleep", {"seconds": 0.1}, tags={"team": "web"})
        c.wait(ok, timeout=20)
        bad = c.submit("fail", {"how": "permanent"})
        c.wait(bad, timeout=20)
        st = c.status()

    status, body = get_json(port, "/healthz")
    assert (status, body) == (200, {"ok": True, "node": "test-node", "pid": d.pid})
    assert get_json(port, "/readyz") == (200, {"ready": True})
    status, info = get_json(port, "/api/info")
    assert status == 200 and info["node"] == "test-node" and info["actions"] is False
    assert info["version"]

    status, body = get_json(port, "/api/status")
    assert status == 200 and set(body) >= set(st) - {"uptime"}
    assert {w["pid"] for w in body["workers"]} == {w["pid"] for w in st["workers"]}

    status, page = get_json(port, "/api/jobs?limit=1")
    assert status == 200 and len(page["jobs"]) == 1 and page["cursor"] and "total" in page
    assert page["jobs"][0]["id"] == bad  # newest first
    status, more = get_json(port, "/api/jobs?limit=1&cursor=" + page["cursor"])
    assert [j["id"] for j in more["jobs"]] == [ok]  # then the one before
    status, tagged = get_json(port, "/api/jobs?tag=team=web&status=succeeded&type=sleep")
    assert [j["id"] for j in tagged["jobs"]] == [ok]

    status, record = get_json(port, f"/api/jobs/{ok}")
    assert status == 200 and record["status"] == "succeeded" and record["history"]
    assert record["tags"] == {"team": "web"}
    status, headers, text = request(port, f"/api/jobs/{said}/logs")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"one: to stdout" in text
    assert get_json(port, "/api/jobs/zz0000000000dead")[1]["error"]["code"] == "unknown_job"
    assert get_json(port, "/api/jobs/zz0000000000dead")[0] == 404
    status, dlq = get_json(port, "/api/dlq?limit=10")
    assert status == 200 and [j["id"] for j in dlq["jobs"]] == [bad]

    samples = scrape_metrics(port)
    assert samples[("jobsup_jobs_submitted_total", frozenset({("type", "sleep")}))] == 1
    status, headers, _ = request(port, "/metrics")
    assert headers["content-type"].startswith("text/plain; version=0.0.4")

    status, headers, html = request(port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"jobsup" in html


@pytest.mark.timeout(60)
def test_bad_requests_get_clear_errors(daemon_factory):
    d = daemon_factory()
    port = port_of(d)
    cases = {
        "/api/jobs?limit=5000": (400, "1 to 1000"),
        "/api/jobs?limit=abc": (400, "whole number"),
        "/api/jobs?limit=0": (400, "out of range"),
        "/api/jobs?status=bogus": (400, "not a job status"),
        "/api/jobs?tag=novalue": (400, "KEY=VALUE"),
        "/api/jobs?colour=red": (400, "unknown query parameter"),
        "/api/jobs?limit=1&limit=2": (400, "twice"),
        "/api/jobs?cursor=%ff%fe": (400, "cursor"),
        "/api/jobs/NOT-AN-ID": (404, "lowercase"),
        "/api/events?job=..": (400, "not a job id"),
        "/api/dlq?limit=99999999999999999999": (400, "out of range"),
        "/no/such/page": (404, "no endpoint GET /no/such/page"),
        "/static/../supervisord/config.py": (404, ""),
        "/static/%2e%2e/config.py": (404, ""),
        "/static/%2e%2e%2fconfig.py": (404, ""),
        "/static/": (404, ""),
    }
    for path, (want, says) in cases.items():
        status, body = get_json(port, path)
        assert status == want, (path, status, body)
        assert says in body["error"]["message"], (path, body)
    status, headers, body = request(port, "/api/status", method="POST")
    assert status == 405 and "GET" in headers["allow"]
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    status, body = get_json(port, "/api/dlq/purge", method="GET")
    assert status == 405

    # Not HTTP at all: the server answers 400 and carries on.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\x00\x01GARBAGE\r\n\r\n")
        assert raw.recv(100).split()[1] == b"400"
    assert get_json(port, "/healthz")[0] == 200
    assert d.accepts()


@pytest.mark.timeout(90)
def test_readyz_follows_redis_and_draining(daemon_factory, redis_server):
    d = daemon_factory(redis={"socket_timeout": 1.0}, daemon={"shutdown_grace": 30.0})
    port = port_of(d)
    assert get_json(port, "/readyz") == (200, {"ready": True})

    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        def unready() -> dict | None:
            status, body = get_json(port, "/readyz")
            return body if status == 503 else None
        body = wait_for(unready, 20, 0.2, "readyz to say Redis is away")
        assert body["ready"] is False and "Redis is unreachable" in body["reason"]
        assert get_json(port, "/healthz")[0] == 200  # the master itself answers
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: get_json(port, "/readyz")[0] == 200, 20, 0.2, "readyz back")

    with d.client() as c:
        c.submit("sleep", {"seconds": 20})
        wait_for(lambda: any(w["job"] for w in c.status()["workers"]), 10,
                 what="the job to start")
    d.signal(signal.SIGTERM)
    _, body = wait_for(lambda: (r := get_json(port, "/readyz"))[0] == 503 and r, 10, 0.1,
                       "readyz to say draining")
    assert "draining" in body["reason"]
    assert get_json(port, "/healthz")[0] == 200


@pytest.mark.timeout(90)
def test_readyz_when_redis_is_down(daemon_factory, redis_server):
    d = daemon_factory(redis={"socket_timeout": 1.0})
    port = port_of(d)
    redis_server.stop(signal.SIGKILL)
    _, body = wait_for(lambda: (r := get_json(port, "/readyz"))[0] == 503 and r, 20, 0.2,
                       "readyz to say Redis is down")
    assert "Redis is unreachable" in body["reason"]
    redis_server.start()
    wait_for(lambda: get_json(port, "/readyz")[0] == 200, 30, 0.2, "readyz back")


@pytest.mark.timeout(60)
def test_healthz_fails_while_the_master_is_stopped(daemon_factory):
    d = daemon_factory()
    port = port_of(d)
    assert get_json(port, "/healthz")[0] == 200
    d.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, body = get_json(port, "/healthz")
        assert status == 503 and body["ok"] is False
        assert "master does not answer" in body["reason"]
        assert time.monotonic() - started < 5  # the web process answers for itself
        assert get_json(port, "/readyz")[0] == 503
    finally:
        d.signal(signal.SIGCONT)
    wait_for(lambda: get_json(port, "/healthz")[0] == 200, 10, 0.1, "healthz back")


@pytest.mark.timeout(60)
def test_event_stream_delivers_a_jobs_state_and_progress(daemon_factory):
    d = daemon_factory(web={"heartbeat": 0.3})
    port = port_of(d)
    stream = Stream(port)
    try:
        status, head = stream.head()
        assert status == 200 and b"text/event-stream" in head
        first = next(stream.messages(5))
        assert first == {"comment": "connected", "retry": "2000"} or "comment" in first
        with d.client() as c:
            jid = c.submit("sleep", {"seconds": 1.2})
        seen = events_until(stream, lambda m: m.get("event") == "state"
                            and data(m)["job"] == jid and data(m)["status"] == "succeeded")
        mine = [m for m in seen if "data" in m and data(m).get("job") == jid]
        names = {m["event"] for m in mine}
        assert {"state", "progress", "output"} <= names, names
        assert next(data(m)["status"] for m in mine if m["event"] == "state") == "queued"
        assert all(m["id"].count("-") == 1 for m in mine)
        assert {"comment": "ping"} in seen  # heartbeats every 0.3 s here
        # ids only grow
        numbers = [int(m["id"].split("-")[1]) for m in seen if "id" in m]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    finally:
        stream.close()


@pytest.mark.timeout(60)
def test_one_jobs_stream_has_that_job_only(daemon_factory):
    d = daemon_factory()
    port = port_of(d)
    with d.client() as c:
        jid = c.submit("sleep", {"seconds": 1.5})
        stream = Stream(port, f"/api/events?job={jid}")
        try:
            assert stream.head()[0] == 200
            c.submit("noop")
            seen = events_until(stream, lambda m: m.get("event") == "state"
                                and data(m)["status"] == "succeeded")
        finally:
            stream.close()
    jobs = {data(m)["job"] for m in seen if "data" in m}
    assert jobs == {jid}


@pytest.mark.timeout(60)
def test_last_event_id_replays_or_resets(daemon_factory):
    d = daemon_factory()
    port = port_of(d)
    stream = Stream(port)
    stream.head()
    with d.client() as c:
        jid = c.submit("sleep", {"seconds": 0.3})
        seen = events_until(stream, lambda m: m.get("event") == "state"
                            and data(m)["job"] == jid and data(m)["status"] == "succeeded")
    stream.close()
    ids = [m["id"] for m in seen if "id" in m]
    assert len(ids) >= 3

    # Resume after the first: everything after it comes again, in order.
    again = Stream(port, headers={"Last-Event-ID": ids[0]})
    again.head()
    replayed = [m["id"] for m in again.messages(2) if "id" in m]
    again.close()
    assert replayed[:len(ids) - 1] == ids[1:]

    # The same by query parameter, for clients that cannot set headers.
    again = Stream(port, f"/api/events?last_event_id={ids[-2]}")
    again.head()
    assert [m["id"] for m in again.messages(2) if "id" in m][:1] == ids[-1:]
    again.close()

    # An id this web process never gave (another boot): reset first.
    boot = ids[0].split("-")[0]
    for stale in (f"{'0' if boot[0] != '0' else '1'}{boot[1:]}-1", "garbage",
                  f"{boot}-999999999"):
        again = Stream(port, headers={"Last-Event-ID": stale})
        again.head()
        first = next(m for m in again.messages(5) if "event" in m)
        again.close()
        assert first["event"] == "reset", (stale, first)
        assert "refetch" in data(first)["reason"]


@pytest.mark.timeout(90)
def test_web_process_is_restarted_and_dies_with_the_master(daemon_factory):
    d = daemon_factory()
    port = port_of(d)
    first = web_pid(d)
    assert first and get_json(port, "/healthz")[0] == 200
    stream = Stream(port)
    stream.head()
    with d.client() as c:
        jid = c.submit("noop")
        last = events_until(stream, lambda m: m.get("event") == "state"
                            and data(m)["job"] == jid and data(m)["status"] == "succeeded")
    stream.close()
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := web_pid(d)) not in (None, first) and p, 10,
                      what="a new web process")
    wait_for(lambda: get_json(port, "/healthz")[0] == 200, 15, 0.1, "the new one to serve")
    assert "web process pid" in d.log.read_text() and "SIGKILL" in d.log.read_text()
    # Ids of the old process are not resumed by the new one.
    again = Stream(port, headers={"Last-Event-ID": [m for m in last if "id" in m][-1]["id"]})
    again.head()
    assert next(m for m in again.messages(5) if "event" in m)["event"] == "reset"
    again.close()

    # The master SIGKILLed: the parent-death signal takes the web process with it.
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait(10)
    wait_for(lambda: gone(second), 10, what="the web process to exit with its master")


@pytest.mark.timeout(60)
def test_web_process_stops_with_the_daemon(daemon_factory):
    d = daemon_factory()
    pid = web_pid(d)
    assert pid
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert gone(pid)
    assert "web process stopped" in d.log.read_text()


@pytest.mark.timeout(60)
def test_a_port_in_use_is_a_clear_start_up_error(daemon_factory):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        d = daemon_factory(start=False, metrics={"listen": f"127.0.0.1:{port}"})
        d.start(wait=False)
        assert d.wait_exit(30) != 0
        text = d.log.read_text()
        assert "metrics.listen" in text and "cannot listen" in text, text[-2000:]
    finally:
        holder.close()


@pytest.mark.timeout(60)
def test_actions_are_refused_by_default(daemon_factory):
    d = daemon_factory()
    port = port_of(d)
    with d.client() as c:
        jid = c.submit("sleep", {"seconds": 10})
    for path, body in ((f"/api/jobs/{jid}/cancel", None), ("/api/dlq/retry", {"all": True}),
                       ("/api/dlq/purge", None)):
        status, reply = get_json(port, path, method="POST", body=body,
                                 headers={"X-Jobsup-Token": TOKEN})
        assert status == 403 and reply["error"]["code"] == "actions_disabled", reply
    with d.client() as c:
        assert c.get(jid).status in ("queued", "running")


@pytest.mark.timeout(60)
def test_actions_with_the_token(daemon_factory):
    d = daemon_factory(web={"actions": True, "token": TOKEN})
    port = port_of(d)
    assert get_json(port, "/api/info")[1]["actions"] is True
    with d.client() as c:
        jid = c.submit("sleep", {"seconds": 30})
        dead = [c.submit("fail", {"how": "permanent"}) for _ in range(2)]
        c.wait_many(dead, timeout=20)
    for headers, why in (({}, "needs the X-Jobsup-Token"),
                         ({"X-Jobsup-Token": "wrong"}, "does not match"),
                         ({"X-Jobsup-Token": TOKEN + "x"}, "does not match")):
        status, reply = get_json(port, f"/api/jobs/{jid}/cancel", method="POST",
                                 headers=headers)
        assert status == 401 and reply["error"]["code"] == "bad_token"
        assert why in reply["error"]["message"]
    status, reply = get_json(port, f"/api/jobs/{jid}/cancel", method="POST",
                             headers={"X-Jobsup-Token": TOKEN})
    assert status == 200 and reply["id"] == jid and reply["status"] in ("cancelled",
                                                                        "cancelling")
    with d.client() as c:
        wait_for(lambda: c.get(jid).status == "cancelled", 15, what="the cancel")
    status, reply = get_json(port, "/api/jobs/zz00000000000000/cancel", method="POST",
                             headers={"X-Jobsup-Token": TOKEN})
    assert status == 404 and reply["error"]["code"] == "unknown_job"

    auth = {"X-Jobsup-Token": TOKEN}
    status, reply = get_json(port, "/api/dlq/retry", method="POST", body={"bogus": 1},
                             headers=auth)
    assert status == 400 and "ids" in reply["error"]["message"]
    status, reply = get_json(port, "/api/dlq/retry", method="POST", body={"ids": [dead[0]]},
                             headers=auth)
    assert status == 200 and reply == {"retried": [dead[0]]}
    with d.client() as c:
        c.wait(dead[0], timeout=20)
        wait_for(lambda: len(c.dead_letters()) == 2, 10, what="the retried job to fail again")
    status, reply = get_json(port, "/api/dlq/purge", method="POST", headers=auth)
    assert status == 200 and sorted(reply["purged"]) == sorted(dead)
    assert get_json(port, "/api/dlq")[1]["jobs"] == []


def test_actions_without_a_token_is_a_config_error():
    from supervisord import config as config_mod
    from supervisord.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config_mod.validate({"web": {"actions": True}})
    assert err.value.errors[0]["loc"] == "web"
    assert "needs a token" in err.value.errors[0]["msg"]


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


@pytest.mark.timeout(180)
def test_many_streams_and_clients_that_never_read(daemon_factory):
    """200 streams that never read, one more than allowed, and a flood of events: the
    extra one gets 503, the silent ones are dropped, memory stays bounded, and the
    daemon and the web process keep serving."""
    d = daemon_factory(web={"max_streams": 200, "stream_queue": 20},
                       pools=[{"name": "default", "workers": 2}])
    port = port_of(d)
    pid = web_pid(d)
    assert pid
    with d.client() as c:  # warm up: the first requests allocate what any run will
        c.wait_many(c.submit_many("noop", [None] * 50), timeout=30)
    get_json(port, "/api/status")
    before = _rss(pid)

    silent = [Stream(port, rcvbuf=4096) for _ in range(200)]
    try:
        for s in silent[:5]:
            assert s.head()[0] == 200
        time.sleep(1.0)  # let every one of them join

        def refused() -> dict | None:
            status, body = get_json(port, "/api/events")
            return body if status == 503 else None
        body = wait_for(refused, 10, 0.2, "the 201st stream to be refused")
        assert body["error"]["code"] == "too_many_streams"
        assert "max_streams" in body["error"]["message"]
        assert get_json(port, "/healthz")[0] == 200

        with d.client() as c:  # a flood: about 5 events a job, ~10 KB per stream a job
            for _ in range(4):
                c.wait_many(c.submit_many("echo", ["x" * 2000] * 250), timeout=60)
        wait_for(lambda: "dropped an event-stream client" in
                 (d.dir / "state" / "web" / "web.log").read_text(), 20, 0.2,
                 "silent clients to be dropped")
        after = _rss(pid)
        # 200 clients x (20 queued events + a socket's buffers) is a few MB; without the
        # bound, every client would hold all ~5,000 events (~2 MB) each: 400 MB.
        print(f"web process RSS: {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB "
              "after 200 silent streams and 1,000 jobs of events")
        assert after - before < 64 * 2**20
        # The streams were dropped, so new ones are taken again.
        fresh = Stream(port)
        try:
            wait_for(lambda: fresh.head()[0] == 200, 10, what="a new stream to be taken")
        finally:
            fresh.close()
    finally:
        for s in silent:
            s.close()
    assert get_json(port, "/api/jobs?limit=1000")[0] == 200
    assert d.accepts()
    assert web_pid(d) == pid  # the same process throughout


@pytest.mark.timeout(60)
def test_web_process_speaks_curve_when_the_api_does(daemon_factory, tmp_path):
    """With CurveZMQ on the API the web process connects with a key pair of its own,
    which the daemon admits beside the operator's allowed clients."""
    import zmq.auth

    from supervisord.client import Client

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    _, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    os.rename(client_public, allowed / "client.key")
    free = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free.append(s.getsockname()[1])
    endpoint = f"tcp://127.0.0.1:{free[0]}"
    d = daemon_factory(start=False, api={
        "endpoint": endpoint, "events": f"tcp://127.0.0.1:{free[1]}",
        "curve_secret_key": str(server_secret), "curve_allowed_clients": str(allowed)})
    d.endpoint = endpoint
    d.client = lambda **kw: Client(endpoint, curve_server_key=str(keys / "server.key"),
                                   curve_client_cert=str(client_secret), **kw)
    d.start()
    port = port_of(d)
    assert get_json(port, "/healthz")[0] == 200
    assert get_json(port, "/api/status")[0] == 200
    stream = Stream(port)
    try:
        stream.head()
        with d.client() as c:
            jid = c.submit("noop")
        events_until(stream, lambda m: m.get("event") == "state" and data(m)["job"] == jid
                     and data(m)["status"] == "succeeded")
    finally:
        stream.close()
