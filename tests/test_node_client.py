"""The Node.js example client against a real daemon: the wire protocol as another
language sees it (docs/protocol.md), run in CI rather than trusted to stay right."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "node"


def node() -> str:
    """The node binary and the example's packages, or a failure saying how to get them:
    CI must run this test, so a box without them fails it rather than skipping it."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed; run scripts/setup-system (it installs Node.js "
                    "and npm, then the example's packages with npm ci)")
    for package in ("zeromq", "@msgpack/msgpack"):
        if not (EXAMPLE / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"the npm package {package} is missing from examples/node/node_modules;"
                        " run scripts/setup-system (npm ci in examples/node)")
    return found


@pytest.mark.timeout(90)
def test_node_client_submits_waits_and_reads_an_unknown_type_error(daemon_factory):
    binary = node()
    d = daemon_factory()
    out = subprocess.run([binary, str(EXAMPLE / "client.js"), d.endpoint],
                         capture_output=True, text=True, timeout=60, cwd=EXAMPLE)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = out.stdout.splitlines()
    submitted = re.fullmatch(r"submitted job ([0-9a-z]+)", lines[0])
    assert submitted, out.stdout
    job_id = submitted.group(1)
    assert lines[1] == f"job {job_id} succeeded: result 5"
    assert lines[2].startswith("refused: unknown_job_type: unknown job type 'no_such_type';")
    assert "add" in lines[2], "the error should name the types this daemon runs"

    # The job the Node.js client submitted is a real one, as the Python client sees it.
    with d.client() as c:
        job = c.get(job_id)
    assert job.status == "succeeded" and job.result == 5 and job.payload == {"a": 2, "b": 3}
