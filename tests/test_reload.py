"""Reload (SIGHUP) recycles only the workers whose own settings changed.

Workers are costly to replace where ``init`` loads a model: growing a pool or
adding a job type must keep the running workers (a new type's handler is
imported by a running worker when its first job arrives), while a change to
what a worker was started with (its memory limit here) must replace them.
"""

from __future__ import annotations

import signal

import pytest

from tests.conftest import wait_for, write_config

pytestmark = pytest.mark.timeout(90)


def _pids(d) -> set[int]:
    return {w["pid"] for w in d.workers() if w["state"] in ("idle", "busy")}


def _reload(d, **changes) -> None:
    """Rewrite the daemon's config file, SIGHUP it, and wait until it applied it."""
    sections = {**d.sections, **changes}
    write_config(d.config, sections)
    d.sections = sections
    applied = d.log.read_text().count("reload: config")
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.log.read_text().count("reload: config") > applied, 20,
             what="the reload to apply")


def test_growing_a_pool_and_adding_a_type_keeps_the_running_workers(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2}])
    before = wait_for(lambda: len(p := _pids(d)) == 2 and p, 20, what="two workers")
    jobs = {**d.sections["jobs"], "late": {"handler": "tests.handlers:whoami", "timeout": 30}}
    _reload(d, pools=[{"name": "default", "workers": 3}], jobs=jobs)
    after = wait_for(lambda: len(p := _pids(d)) == 3 and p, 20, what="a third worker")
    assert before < after, (before, after)  # the two original workers are still there
    with d.client() as c:
        # Three at once, each long enough to hold its worker: one lands on each.
        ran = c.wait_many(c.submit_many("late", [{"sleep": 1.0}] * 3), timeout=30)
        assert [j.status for j in ran] == ["succeeded"] * 3, ran
        assert {j.result for j in ran} == after  # the old workers imported the new handler
        assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3
    assert _pids(d) == after
    assert "cannot import" not in d.log.read_text()


def test_a_new_type_whose_handler_cannot_be_imported_fails_its_jobs_clearly(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 1}])
    before = wait_for(lambda: len(p := _pids(d)) == 1 and p, 20, what="one worker")
    jobs = {**d.sections["jobs"], "typo": {"handler": "tests.handlers:no_such", "timeout": 30}}
    _reload(d, jobs=jobs)
    with d.client() as c:
        job = c.wait(c.submit("typo"), timeout=20)
        assert job.status == "failed" and job.error["kind"] == "permanent", job
        assert "cannot import handler tests.handlers:no_such" in job.error["message"]
        assert c.wait(c.submit("add", {"a": 2, "b": 2}), timeout=20).result == 4
    assert _pids(d) == before  # the worker stays: its other types still work


def test_changing_the_memory_limit_recycles_the_workers(daemon_factory):
    d = daemon_factory(pools=[{"name": "default", "workers": 2}])
    before = wait_for(lambda: len(p := _pids(d)) == 2 and p, 20, what="two workers")
    _reload(d, pools=[{"name": "default", "workers": 2, "memory_limit": "3GiB"}])
    after = wait_for(lambda: len(p := _pids(d)) == 2 and not p & before and p, 30,
                     what="both workers replaced")
    assert not after & before
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 1}), timeout=20).result == 2
