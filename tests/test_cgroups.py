"""cgroup v2 memory caps (``memory_limit_kind = "cgroup"``).

Where no writable delegated cgroup v2 subtree exists (a cgroup v1 box, as the
development machine), ``config check`` and ``run`` refuse with exit 2 and say why.
Where one exists, a real daemon runs its workers in child cgroups with
``memory.max`` and no swap, a kernel OOM kill there fails the job with kind
``memory``, and the cgroups are gone once the workers are.  The parsing of
``/proc/self/cgroup`` and ``memory.events`` is also checked on files the test writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisord.errors import ConfigError
from supervisord.pool import cgroups
from tests.conftest import ROOT, Daemon, wait_for, write_config

MiB = 1024**2


def _v2_reason() -> str:
    """Why the real cgroup path cannot be tried here ('' when it can)."""
    try:
        base = cgroups.own_cgroup()
    except (ValueError, OSError) as exc:
        return f"no cgroup v2 here: {exc}"
    for name in ("", "cgroup.procs", "cgroup.subtree_control"):
        if not os.access(base / name, os.W_OK):
            return f"{base / name} is not writable by uid {os.geteuid()} (not delegated to us)"
    if "memory" not in (base / "cgroup.controllers").read_text().split():
        return f"the memory controller is not available in {base}"
    return ""


V2_REASON = _v2_reason()


def jobsup(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "supervisord", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def cgroup_config(tmp_path: Path, **pool) -> Path:
    return write_config(tmp_path / "cg.toml", {
        "daemon": {"state_dir": str(tmp_path / "state")},
        "redis": {"url": f"unix://{tmp_path}/none.sock"},
        "api": {"endpoint": f"ipc://{tmp_path}/api.sock", "events": f"ipc://{tmp_path}/ev.sock"},
        "metrics": {"listen": ""},
        "pools": [{"name": "capped", "workers": 1, "memory_limit": "256MiB",
                   "memory_limit_kind": "cgroup", **pool}, {"name": "plain", "workers": 1}],
        "jobs": {"noop": {"handler": "examples.demo:noop", "pool": "plain"}},
    })


# -- no delegated cgroup v2: a plain refusal --------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.skipif(not V2_REASON, reason="cgroup v2 is delegated here: the real path is tested")
def test_config_check_and_run_refuse_cgroup_caps_without_cgroup_v2(tmp_path):
    path = cgroup_config(tmp_path)
    for args in (("config", "check", str(path)), ("-c", str(path), "run")):
        res = jobsup(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "pools.capped.memory_limit_kind" in res.stderr, res.stderr
        assert "cgroup v2" in res.stderr and "Delegate=yes" in res.stderr, res.stderr
        assert "pools.plain" not in res.stderr
    assert not (tmp_path / "api.sock").exists()  # refused before anything started


def test_cgroup_caps_need_a_memory_limit():
    from supervisord.config import validate

    with pytest.raises(ConfigError) as info:
        validate({"pools": [{"name": "p", "memory_limit_kind": "cgroup"}]})
    [err] = info.value.errors
    assert err["loc"] == "pools[0]" and "needs memory_limit" in err["msg"]


def test_own_cgroup_reads_the_v2_line_and_memory_events(tmp_path):
    root = tmp_path / "cgroup"
    (root / "system.slice" / "jobsup.service").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    proc = tmp_path / "cgroup-of-self"
    proc.write_text("12:memory:/v1/path\n0::/system.slice/jobsup.service\n")
    assert cgroups.own_cgroup(root, str(proc)) == root / "system.slice" / "jobsup.service"
    proc.write_text("12:memory:/v1/only\n")
    with pytest.raises(ValueError, match="no cgroup v2 path"):
        cgroups.own_cgroup(root, str(proc))
    with pytest.raises(ValueError, match="no cgroup v2 hierarchy"):
        cgroups.own_cgroup(tmp_path / "v1", str(proc))
    cg = tmp_path / "w1"
    cg.mkdir()
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert cgroups.Cgroups(tmp_path).oom_kills(cg) == 1
    assert cgroups.Cgroups(tmp_path).oom_kills(tmp_path / "gone") == 0


# -- a delegated cgroup v2: the real thing ------------------------------------------------------

@pytest.fixture
def delegated() -> Iterator[Path]:
    """A cgroup of its own for the daemon under test, with the memory controller.

    cgroup v2 lets a cgroup hand controllers to children only when it has no
    processes of its own (the root excepted), so a test runner that is not in the
    root moves itself into a leaf first, as the daemon does with its ``master`` leaf.
    """
    base = cgroups.own_cgroup()
    if base != cgroups.ROOT:
        leaf = base / f"pytest-{os.getpid()}"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text("0")
    (base / "cgroup.subtree_control").write_text("+memory")
    mine = base / f"jobsup-test-{os.getpid()}"
    mine.mkdir()
    try:
        yield mine
    finally:
        for child in sorted(mine.glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                (child / "cgroup.kill").write_text("1")
            wait_for(lambda c=child: not (c / "cgroup.procs").exists()
                     or not (c / "cgroup.procs").read_text().strip(), 10, what="empty cgroup")
            with contextlib.suppress(OSError):
                child.rmdir()


@pytest.mark.timeout(120)
@pytest.mark.skipif(bool(V2_REASON), reason=V2_REASON or "-")
def test_workers_run_capped_in_their_own_cgroups_and_an_oom_kill_is_kind_memory(
        tmp_path, redis_server, delegated):
    d = Daemon(tmp_path / "d", redis_server.url, {
        "pools": [{"name": "default", "workers": 1, "memory_limit": "96MiB",
                   "memory_limit_kind": "cgroup"}],
        "jobs": {"env": {"handler": "tests.box_handlers:environment", "timeout": 30},
                 "grow": {"handler": "tests.box_handlers:grow", "timeout": 30,
                          "max_attempts": 1}}})
    # The daemon starts inside the cgroup delegated to it, as systemd would start it.
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    enter = ("import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write('0'); "
             "os.execv(sys.executable, [sys.executable, '-m', 'supervisord', *sys.argv[2:]])")
    with open(d.log, "ab") as log:
        d.proc = subprocess.Popen([sys.executable, "-c", enter, str(delegated), "-c",
                                   str(d.config), "run"], stdout=log, stderr=subprocess.STDOUT,
                                  cwd=ROOT, env=env)
    try:
        d.wait_ready()
        assert (delegated / "master" / "cgroup.procs").read_text().split()[0] == str(d.pid)
        with d.client() as c:
            seen = c.wait(c.submit("env", {}), timeout=30)
            assert seen.status == "succeeded", seen.error
            line = next(x for x in seen.result["cgroup"].splitlines() if x.startswith("0::"))
            cg = cgroups.ROOT / line[3:].lstrip("/")
            assert cg.parent == delegated and cg.name.startswith("w"), line
            assert int((cg / "memory.max").read_text()) == 96 * MiB
            swap = cg / "memory.swap.max"
            assert not swap.exists() or swap.read_text().strip() == "0"

            job = c.wait(c.submit("grow", {"bytes": 512 * MiB}), timeout=60)
        assert job.status == "failed" and job.error["kind"] == "memory", job.error
        assert "OOM killer" in job.error["message"], job.error
        wait_for(lambda: not cg.exists(), 10, what="the OOM-killed worker's cgroup to go")
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
        assert not [p for p in delegated.iterdir() if p.is_dir() and p.name.startswith("w")]
    finally:
        d.kill()
