"""The web process's way to the master: the ordinary API, from a few threads.

Requests go through the synchronous ``Client`` run in a small thread pool,
one ``Client`` per thread: it already frames requests, matches replies by
request id, maps error replies to the exception hierarchy and speaks
CurveZMQ, so the web process talks to the master exactly as any client does
and shares no code path the CLI does not also test.  Each call is short (the
master answers from memory or reads Redis off its loop); a handful of
threads cover a page's requests, and a bound on calls waiting for a thread
turns a flood into quick 503s instead of a queue that grows without limit.
The event stream, which is long-lived, reads a SUB socket in the event loop
itself (see stream.py).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from supervisord.client import Client
from supervisord.errors import Unavailable

_THREADS = 4
_MAX_WAITING = 64  # calls queued or running at once; more get 503 at once


class Backend:
    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="jobsup-web-api")
        self._local = threading.local()
        self._calls = 0

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            s = self.settings
            client = Client(s["endpoint"], timeout=10.0, connect_timeout=1.0,
                            events_endpoint=s["events"],
                            curve_server_key=s["curve_server_key"],
                            curve_client_cert=s["curve_client_cert"])
            self._local.client = client
        return client

    async def call(self, op: str, timeout: float = 10.0, **fields: Any) -> Any:
        """One API request; raises the daemon's error, or ``Unavailable`` when the master
        does not answer within ``timeout`` seconds (waiting for a thread included)."""
        if self._calls >= _MAX_WAITING:
            raise Unavailable(f"the web process has {self._calls} requests to the daemon "
                              "outstanding; try again shortly")
        self._calls += 1
        loop = asyncio.get_running_loop()
        try:
            work = loop.run_in_executor(
                self._pool, lambda: self._client().call(op, reply_timeout=timeout, **fields))
            try:
                return await asyncio.wait_for(work, timeout + 0.5)
            except TimeoutError:
                raise Unavailable(f"the daemon did not answer '{op}' within {timeout:g}s "
                                  "(is it stopped or overloaded?)") from None
        finally:
            self._calls -= 1

    def close(self) -> None:
        """At exit: the clients' sockets go with the process (closing a ZeroMQ context
        while a thread still waits on it would block)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
