"""docs/protocol.md cannot drift from the code: its generated tables must be what
scripts/protocol-doc writes now, and what a real daemon sends (records, status)
must be named in its hand-written parts."""

from __future__ import annotations

import difflib
import importlib.util
import re
import subprocess
import sys

import pytest

import worker.errors  # noqa: F401  (the suite imports it anyway; the tables must not change)
from supervisord import errors
from tests.conftest import ROOT, wait_for

DOC = ROOT / "docs" / "protocol.md"
_spec = importlib.util.spec_from_file_location("protocol_doc", ROOT / "scripts" / "protocol_doc.py")
protocol_doc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protocol_doc)


def section(title: str) -> str:
    """The hand-written text of one ``## title`` section (its generated part left out)."""
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else len(text)]
    return re.sub(r"<!-- BEGIN GENERATED: (\w+) -->.*?<!-- END GENERATED: \1 -->", "", body,
                  flags=re.S)


def documented(title: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", section(title)))


def test_committed_doc_is_what_the_script_writes():
    current = DOC.read_text()
    wanted = protocol_doc.render(current)
    diff = "".join(difflib.unified_diff(current.splitlines(True), wanted.splitlines(True),
                                        "docs/protocol.md", "scripts/protocol-doc", n=1))
    assert wanted == current, ("docs/protocol.md is out of date with the code: run "
                               f"scripts/protocol-doc and commit it.\n{diff[:4000]}")


def test_a_stale_or_broken_doc_is_found(tmp_path):
    current = DOC.read_text()
    stale = current.replace("| `wait_timeout` |", "| `wait_time` |", 1)
    assert stale != current
    assert protocol_doc.render(stale) == current, "a hand-edited table is written back"
    without = re.sub(r"<!-- BEGIN GENERATED: errors -->.*?<!-- END GENERATED: errors -->",
                     "", current, flags=re.S)
    with pytest.raises(protocol_doc.DocError, match="lacks the markers of errors"):
        protocol_doc.render(without)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "protocol_doc.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_every_operation_and_error_code_is_in_the_doc():
    text = DOC.read_text()
    for op in protocol_doc.api.OPERATIONS:
        assert f"### `{op}`" in text
    prose = documented("Errors")
    for cls in protocol_doc._error_classes(errors.JobsupError):
        # The hand-written part must say what a client does with it, or that it is
        # never sent.
        assert cls.code in prose, f"the Errors prose does not mention code {cls.code!r}"


@pytest.mark.timeout(60)
def test_what_a_daemon_sends_is_documented(shared):
    with shared.client() as c:
        job_id = c.submit("fail", {"n": 1}, tags={"team": "docs"}, key="protocol-doc-1")
        c.outcomes([job_id])
        record = c.call("get", id=job_id)
        outcome = c.call("wait", ids=[job_id], view="outcomes")[0]
        status = c.status()
    fields = documented("Job records")
    assert set(record) - fields == set(), "job record fields missing from docs/protocol.md"
    assert set(record["error"]) - fields == set()
    assert {k for entry in record["history"] for k in entry} - fields == set()
    assert set(outcome) - fields == set()
    fields = documented("Status")
    assert set(status) - fields == set(), "status fields missing from docs/protocol.md"
    for part in ("pools", "workers"):
        assert {k for item in status[part] for k in item} - fields == set(), part
    assert set(status["redis"]) - fields == set()


def reply_type(op: str) -> type:
    [reply] = protocol_doc.reply_types(protocol_doc._models()[op])
    return reply


def assert_has_the_fields_of_its_table(op: str, result: dict) -> None:
    reply = reply_type(op)
    named = set(reply.__annotations__)
    assert set(result) - named == set(), (
        f"a {op} reply carries fields {reply.__name__} (its table in docs/protocol.md) "
        "does not name: add them to it in supervisord/wire/api.py, then run "
        "scripts/protocol-doc")
    assert reply.__required_keys__ - set(result) == set(), (
        f"a {op} reply lacks fields {reply.__name__} says it always has")


@pytest.mark.timeout(90)
def test_each_reply_has_the_fields_its_table_names(daemon_factory):
    """The reply tables come from the ``...Reply`` types, which the daemon does not check
    itself: a real daemon's replies must carry no field those types (and so the doc)
    leave out."""
    d = daemon_factory()
    with d.client() as c:
        replies = {"ping": c.call("ping")}
        failed = c.call("submit", type="fail", payload={"how": "permanent"},
                        key="protocol-doc-reply")
        replies["submit"] = failed
        c.outcomes([failed["id"]])
        replies["logs"] = c.call("logs", id=failed["id"])
        running = c.call("submit", type="sleep", payload={"seconds": 30})["id"]
        wait_for(lambda: c.get(running).status == "running", what="the sleep job to start")
        replies["cancel"] = c.call("cancel", id=running)
        assert replies["cancel"]["status"] == "cancelling"
        c.outcomes([running])
        replies["jobs"] = c.call("jobs", limit=1)
        replies["reload"] = c.call("reload")
        listed = c.call("dlq")
        assert [job["id"] for job in listed["jobs"]] == [failed["id"]]
        purged = c.call("dlq", action="purge", ids=[failed["id"]])
        assert purged["ids"] == [failed["id"]]
        replies["shutdown"] = c.call("shutdown")
    for op, result in replies.items():
        assert_has_the_fields_of_its_table(op, result)
    for result in (listed, purged):
        assert_has_the_fields_of_its_table("dlq", result)
    assert {op for op, m in protocol_doc._models().items()
            if protocol_doc.reply_types(m)} == set(replies) | {"dlq"}, (
        "an operation with a reply table is not exercised here")
