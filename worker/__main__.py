"""Worker entry point: limits first, then everything else.

Only the standard library and ``worker.limits`` load before the memory rlimit
and the parent-death signal are in force.
"""

import json
import os

from worker import limits

_spec = json.loads(os.environ["JOBSUP_WORKER_SPEC"])
limits.apply(_spec)

from worker.runtime import run  # noqa: E402 - must follow the limits

raise SystemExit(run(_spec))
