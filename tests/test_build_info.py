"""Version and build: ``jobsup --version``, ``jobsup_build_info``, the standard
process metrics on a running daemon, and what the built wheel holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import supervisord
from tests.conftest import ROOT, scrape_metrics

VERSION = supervisord.__version__


def test_version_option():
    res = subprocess.run([sys.executable, "-m", "supervisord", "--version"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res
    assert res.stdout.strip() == f"jobsup {VERSION}"


def test_version_is_the_distribution_version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        installed = version("jobsup")
    except PackageNotFoundError:
        pytest.skip("jobsup is not installed in this environment (run scripts/setup)")
    assert installed == VERSION


@pytest.mark.timeout(60)
def test_build_info_and_process_metrics(shared):
    with shared.client() as c:
        port = c.status()["metrics_port"]
    samples = scrape_metrics(port)
    assert samples[("jobsup_build_info", frozenset({("version", VERSION)}))] == 1.0
    names = {name for name, _ in samples}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_start_time_seconds", "python_info",
                 "python_gc_collections_total"):
        assert name in names, name
    # They are the daemon's own, not the test's.
    rss = samples[("process_resident_memory_bytes", frozenset())]
    assert rss > 1_000_000


@pytest.mark.timeout(600)
def test_wheel_ships_py_typed_and_lua_without_setuptools_warnings(tmp_path: Path):
    """Builds a wheel the way pip does (an isolated build with setuptools from the
    package index): the typed marker and the Lua scripts are in it, and setuptools
    has nothing to warn about (a Lua directory outside ``packages`` once drew a
    long deprecation warning)."""
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True, timeout=60).returncode:
        pytest.skip("pip is not available to build a wheel")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache"))
    res = subprocess.run([*pip, "wheel", "--no-deps", "-v", "-w", str(tmp_path / "out"),
                          str(src)], capture_output=True, text=True, timeout=540)
    log = res.stdout + res.stderr
    if res.returncode and ("No matching distribution" in log or "Could not find" in log):
        pytest.skip("no package index reachable for the isolated build's setuptools")
    assert res.returncode == 0, log[-3000:]
    [wheel] = (tmp_path / "out").glob("jobsup-*.whl")
    assert wheel.name.startswith(f"jobsup-{VERSION}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"supervisord/py.typed", "worker/py.typed"} <= names
    assert {"supervisord/redis/lua/apply.lua", "supervisord/redis/lua/submit.lua"} <= names
    meta = zipfile.ZipFile(wheel).read(f"jobsup-{VERSION}.dist-info/METADATA").decode()
    assert "Classifier: Typing :: Typed" in meta
    for bad in ("SetuptoolsDeprecationWarning", "BuildBackendWarning",
                "is absent from the `packages`",
                "as data is deprecated"):
        assert bad not in log, bad
