"""jobsup's master side: the daemon, its store, and the client library.

``from supervisord import Client`` loads the client lazily so that worker
processes, which import ``supervisord.errors``, stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "JobsupError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Client":
        from supervisord.client import Client
        return Client
    if name == "JobsupError":
        from supervisord.errors import JobsupError
        return JobsupError
    raise AttributeError(name)
