"""Every Redis key jobsup uses, in one place.

The Lua scripts build the same names from the prefix (see ``lua/common.lua``);
keep both in step.  All keys of one daemon family share ``{prefix}:``.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def history(self, job_id: str) -> str:
        return f"{self.prefix}:hist:{job_id}"

    def output(self, job_id: str) -> str:
        """The last ``max_output`` bytes a job's handler wrote (a string; the janitor
        deletes it with the record)."""
        return f"{self.prefix}:out:{job_id}"

    def queue(self, job_type: str) -> str:
        """One queue per job type (a zset by -priority, then id)."""
        return f"{self.prefix}:queue:{job_type}"

    def circuit(self, job_type: str) -> str:
        return f"{self.prefix}:circuit:{job_type}"

    @property
    def scheduled(self) -> str:
        return f"{self.prefix}:scheduled"

    def owned(self, node: str) -> str:
        return f"{self.prefix}:owned:{node}"

    def node(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def index_all(self) -> str:
        return f"{self.prefix}:idx:all"

    def index_status(self, status: str) -> str:
        return f"{self.prefix}:idx:status:{status}"

    def index_type(self, job_type: str) -> str:
        return f"{self.prefix}:idx:type:{job_type}"

    def index_tag(self, key: str, value: str) -> str:
        return f"{self.prefix}:idx:tag:{key}={value}"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:dlq"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}:expiry"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    @property
    def lease_counter(self) -> str:
        return f"{self.prefix}:leases"
