"""Every Redis key jobsup uses, in one place.

The Lua scripts build the same names from ``Keys.base``, which they get as
their first argument (see ``lua/common.lua``); keep both in step.  Every key of
a prefix starts ``{prefix}:``: the braces make the prefix the key's hash tag, so
all of them live in one Redis Cluster slot and each script's keys are in the
slot of the key it declares (``Keys.anchor``).  Keys of jobsup before that
layout (``prefix:...``) are renamed once at start (``redis/layout.py``).
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base = "{" + prefix + "}"

    @property
    def anchor(self) -> str:
        """The key every script call declares (``KEYS[1]``): it routes the call to the
        prefix's slot, where all the keys the script touches are."""
        return self.nodes

    @property
    def layout(self) -> str:
        """Set once the keys of the untagged layout have been renamed."""
        return f"{self.base}:layout"

    @property
    def layout_lock(self) -> str:
        return f"{self.base}:layout-lock"

    def job(self, job_id: str) -> str:
        return f"{self.base}:job:{job_id}"

    def history(self, job_id: str) -> str:
        return f"{self.base}:hist:{job_id}"

    def output(self, job_id: str) -> str:
        """The last ``max_output`` bytes a job's handler wrote (a string; the janitor
        deletes it with the record)."""
        return f"{self.base}:out:{job_id}"

    def queue(self, job_type: str) -> str:
        """One queue per job type (a zset by -priority, then id)."""
        return f"{self.base}:queue:{job_type}"

    def circuit(self, job_type: str) -> str:
        return f"{self.base}:circuit:{job_type}"

    @property
    def scheduled(self) -> str:
        return f"{self.base}:scheduled"

    def owned(self, node: str) -> str:
        return f"{self.base}:owned:{node}"

    def node(self, node: str) -> str:
        return f"{self.base}:node:{node}"

    @property
    def nodes(self) -> str:
        return f"{self.base}:nodes"

    @property
    def index_all(self) -> str:
        return f"{self.base}:idx:all"

    def index_status(self, status: str) -> str:
        return f"{self.base}:idx:status:{status}"

    def index_type(self, job_type: str) -> str:
        return f"{self.base}:idx:type:{job_type}"

    def index_tag(self, key: str, value: str) -> str:
        return f"{self.base}:idx:tag:{key}={value}"

    @property
    def dead_letters(self) -> str:
        return f"{self.base}:dlq"

    @property
    def expiry(self) -> str:
        return f"{self.base}:expiry"

    def idempotency(self, key: str) -> str:
        return f"{self.base}:key:{key}"

    @property
    def lease_counter(self) -> str:
        return f"{self.base}:leases"
