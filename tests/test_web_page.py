"""The status page in a real headless Chromium, against a real daemon and its web process.

Each test loads the page the daemon serves and checks what an operator sees:
the workers' pids and the jobs, a job submitted after the page loaded showing
up without a reload, a job's progress moving and its output arriving live, the
dead-letter set, actions refused without the token and done with it, and the
page saying so when Redis or the daemon stops answering, then recovering by
itself.  Screenshots go to each test's tmp dir (``shots/``).
"""

from __future__ import annotations

import contextlib
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.browser import Page, browser
from tests.conftest import Daemon, wait_for

TOKEN = "page-token-for-the-tests-only-0123456789"
STEPPER = {"stepper": {"handler": "tests.handlers:stepper", "timeout": 120}}
MARK = "window.__jobsupNoReload = 1"  # gone if the page reloads
MARKED = "return window.__jobsupNoReload === 1"


def port_of(daemon: Daemon) -> int:
    with daemon.client() as c:
        return c.status()["metrics_port"]


@pytest.fixture
def open_page(tmp_path: Path) -> Iterator[Callable[[Daemon], Page]]:
    """``open_page(daemon)``: a browser on that daemon's status page, quit afterwards."""
    with contextlib.ExitStack() as stack:
        def make(daemon: Daemon) -> Page:
            return stack.enter_context(
                browser(f"http://127.0.0.1:{port_of(daemon)}", tmp_path / "shots"))
        yield make


def pct(page: Page) -> float:
    text = page.text("#progress-pct").rstrip("%")
    return float(text) if text else -1.0


def status_in(page: Page, css: str) -> str:
    return page.text(css + " .badge")


@pytest.mark.timeout(120)
def test_overview_shows_workers_and_jobs_and_new_jobs_without_a_reload(daemon_factory,
                                                                      open_page):
    d = daemon_factory(jobs=STEPPER)
    with d.client() as c:
        first = c.submit("add", {"a": 1, "b": 2}, tags={"who": "<b>bold</b>"})
        c.wait(first, timeout=20)
    pids = [w["pid"] for w in d.workers()]
    page = open_page(d)
    page.open("#/")
    page.wait(lambda: all(str(pid) in page.text("#workers") for pid in pids), what="worker pids")
    page.wait(lambda: page.one(f'#jobs tr[data-job="{first}"]'), what="the first job's row")
    row = page.one(f'#jobs tr[data-job="{first}"]')
    assert "succeeded" in row.text
    # Job data is text, never markup: the tag shows as typed and makes no element.
    assert "who=<b>bold</b>" in row.text
    assert page.all("#jobs b") == []
    assert "read-only" in page.text("#facts")
    assert page.all("button.cancel") == []  # read-only: no action buttons
    page.wait(lambda: page.one('#live[data-state="live"]'), what="the event stream")
    page.wait(lambda: page.one('#types tr[data-type="add"]'), what="the job types table")

    page.driver.execute_script(MARK)
    with d.client() as c:
        later = c.submit("stepper", {"steps": 3, "interval": 0.3}, tags={"batch": "7"})
        page.wait(lambda: page.one(f'#jobs tr[data-job="{later}"]'), 15,
                  "a job submitted after the page loaded")
        page.wait(lambda: "succeeded" in status_in(page, f'#jobs tr[data-job="{later}"]'), 20,
                  "the new job's status to change to succeeded")
        c.wait(later, timeout=20)
    assert page.driver.execute_script(MARKED), "the page reloaded"
    page.wait(lambda: re.fullmatch(r"2 of 2", page.text("#jobs-extra")),
              what='the count "2 of 2"')
    page.shot("overview")

    # Filters: by status, by tag; both as the daemon applies them.
    with d.client() as c:
        bad = c.submit("fail", {"how": "permanent"})
        c.wait(bad, timeout=20)
    Select(page.one("#f-status")).select_by_value("failed")
    page.wait(lambda: [r.get_attribute("data-job") for r in page.all("#jobs tbody tr")] == [bad],
              what="only the failed job")
    assert "status=failed" in page.driver.current_url
    page.one("#f-status").send_keys("")  # keep focus in the form
    Select(page.one("#f-status")).select_by_value("")
    tag = page.one("#f-tag")
    tag.send_keys("batch=7", Keys.ENTER)
    page.wait(lambda: [r.get_attribute("data-job") for r in page.all("#jobs tbody tr")]
              == [later], what="only the job tagged batch=7")
    tag.clear()
    tag.send_keys("no-equals-sign", Keys.ENTER)
    page.wait(lambda: "KEY=VALUE" in page.text("#jobs"), what="the daemon's error for a bad tag")
    assert page.script_errors() == []


@pytest.mark.timeout(120)
def test_job_page_shows_progress_moving_and_live_output(daemon_factory, open_page):
    d = daemon_factory(jobs=STEPPER)
    page = open_page(d)
    with d.client() as c:
        job = c.submit("stepper", {"steps": 10, "interval": 0.6})
        page.open(f"#/job/{job}")
        page.driver.execute_script(MARK)
        first = page.wait(lambda: 0 < pct(page) < 100 and pct(page), 20, "progress under way")
        moved = page.wait(lambda: first < pct(page) < 100 and pct(page), 20, "progress moving")
        assert moved > first
        page.wait(lambda: "emitted step" in page.text("#output")
                  and "printed step" in page.text("#output"), 20, "live output")
        page.wait(lambda: "running" in page.text("#job-timeline"), what="the running entry")
        page.shot("job-running")
        c.wait(job, timeout=30)
    page.wait(lambda: "succeeded" in status_in(page, "#job-head"), 15, "the final status")
    page.wait(lambda: "succeeded" in page.text("#job-timeline"), what="the final entry")
    assert pct(page) == 100
    output = page.text("#output")
    for n in range(1, 11):
        assert f"printed step {n}" in output, output
    assert page.text("#job-result").replace(" ", "").replace("\n", "") == '{"done":10}'
    assert page.driver.execute_script(MARKED), "the page reloaded"
    page.shot("job-done")

    # Opened after the fact, the page shows the stored output (the printed lines).
    page.open(f"#/job/{job}")
    page.wait(lambda: "printed step 10" in page.text("#output"), what="the stored output")
    page.open("#/job/0nosuchjob0")
    page.wait(lambda: "No such job" in page.text("#job-main"), what="an unknown job's error")
    assert page.script_errors() == []


@pytest.mark.timeout(120)
def test_dead_letters_show_jobs_that_ended_failed(daemon_factory, open_page):
    d = daemon_factory()
    with d.client() as c:
        gone = c.submit("fail", {"how": "permanent"})
        c.wait(gone, timeout=20)
    page = open_page(d)
    page.open("#/dlq")
    page.wait(lambda: page.one(f'#dlq tr[data-job="{gone}"]'), what="the dead letter")
    row = page.text(f'#dlq tr[data-job="{gone}"]')
    assert "permanent" in row and "bad input, retrying cannot help" in row
    page.wait(lambda: page.text("#dlq-count") == "1", what="the count in the menu")
    assert "Read-only" in page.text("#dlq") and page.all("#dlq button") == []
    with d.client() as c:
        again = c.submit("fail", {"how": "exception"})
        c.wait(again, timeout=20)
    page.wait(lambda: page.one(f'#dlq tr[data-job="{again}"]'), 15,
              "a job that failed while the page was open")
    page.shot("dlq")
    assert page.script_errors() == []


def post(port: int, path: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(150)
def test_cancel_retry_and_purge_from_the_page_need_the_token(daemon_factory, open_page):
    d = daemon_factory(jobs=STEPPER, web={"actions": True, "token": TOKEN})
    port = port_of(d)
    with d.client() as c:
        job = c.submit("stepper", {"steps": 200, "interval": 0.2})
        wait_for(lambda: c.get(job).status == "running", 20, what="the job to run")
        assert post(port, f"/api/jobs/{job}/cancel") == 401  # no token: refused

        page = open_page(d)
        page.open(f"#/job/{job}")
        page.click("#job-head button.cancel")
        page.wait(lambda: page.one("#ask").is_displayed(), what="the confirm dialog")
        page.one("#ask-token").send_keys("not-the-token")
        page.click("#ask-yes")
        page.wait(lambda: "Refused" in page.text("#ask-error"), what="the refusal")
        assert "does not match" in page.text("#ask-error")
        assert c.get(job).status == "running" and not c.get(job).model_extra.get(
            "cancel_requested")
        assert page.driver.execute_script("return sessionStorage.length") == 0
        page.shot("cancel-refused")

        page.one("#ask-token").send_keys(TOKEN)
        page.click("#ask-yes")
        page.wait(lambda: not page.one("#ask").is_displayed(), what="the dialog to close")
        assert c.wait(job, timeout=30).status == "cancelled"
        page.wait(lambda: "cancelled" in status_in(page, "#job-head"), 15,
                  "the cancelled status on the page")

        # The token is kept for the session: retry and purge ask only to confirm.
        failed = c.submit("fail", {"how": "permanent"})
        c.wait(failed, timeout=20)
    page.open("#/dlq")
    page.click(f'#dlq tr[data-job="{failed}"] button')
    page.wait(lambda: page.one("#ask").is_displayed(), what="the confirm dialog")
    assert not page.one("#ask-token").is_displayed()
    page.click("#ask-yes")
    page.wait(lambda: "Retried 1" in page.text("#toast"), what="the retry reply")
    with d.client() as c:
        wait_for(lambda: c.get(failed).attempt >= 1 and c.get(failed).status == "failed"
                 and len([e for e in c.get(failed).history if e["status"] == "queued"]) == 2,
                 20, what="the retried job to run and fail again")
    page.click("#purge")
    page.wait(lambda: page.one("#ask").is_displayed(), what="the confirm dialog")
    page.click("#ask-yes")
    page.wait(lambda: "The dead-letter set is empty" in page.text("#dlq"), 15, "an empty set")
    assert page.script_errors() == []


@pytest.mark.timeout(150)
def test_page_says_when_redis_or_the_daemon_is_down_and_recovers(daemon_factory, redis_server,
                                                                 open_page):
    d = daemon_factory()
    page = open_page(d)
    page.open("#/")
    page.wait(lambda: page.one("#workers tr[data-pid]"), what="the workers")
    assert not page.one("#banner").is_displayed()

    redis_server.stop(signal.SIGKILL)
    page.wait(lambda: "Redis is unreachable" in page.text("#banner"), 30, "the Redis banner")
    page.shot("redis-down")
    redis_server.start()
    page.wait(lambda: not page.one("#banner").is_displayed(), 60, "the banner to go")

    d.signal(signal.SIGSTOP)
    try:
        page.wait(lambda: "does not answer" in page.text("#banner"), 30, "the daemon banner")
        assert page.one('[data-live-status].stale'), "old figures are not marked as old"
        assert page.one('#live[data-state="stale"]'), "a daemon that does not answer is not live"
        page.shot("daemon-stopped")
    finally:
        d.signal(signal.SIGCONT)
    page.wait(lambda: not page.one("#banner").is_displayed(), 30, "the banner to go")
    assert not page.one('[data-live-status].stale')
    with d.client() as c:
        job = c.submit("add", {"a": 2, "b": 3})
        page.wait(lambda: page.one(f'#jobs tr[data-job="{job}"]'), 20,
                  "a new job once the daemon answers again")
    assert page.script_errors() == []
