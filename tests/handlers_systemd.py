"""Pool hooks for tests/test_systemd.py."""

from __future__ import annotations

import os
import time


def slow_init() -> dict:
    """A pool ``init`` that takes a while, as loading a model does: READY=1 must wait."""
    time.sleep(float(os.environ.get("JOBSUP_TEST_INIT_DELAY", "1.5")))
    return {"loaded": True}
