"""Opening the daemon's Redis: the embedded server or a URL, with clear errors."""

from __future__ import annotations

import logging
import time

import redis

from supervisord.config import RedisConfig
from supervisord.errors import Unavailable

log = logging.getLogger("jobsup.master")


def connect(url: str, rc: RedisConfig, wait: float = 30.0) -> redis.Redis:
    """A client that answered PING; waits up to ``wait`` s for a Redis still starting."""
    client = redis.Redis.from_url(url, socket_timeout=rc.socket_timeout,
                                  socket_connect_timeout=rc.socket_timeout)
    deadline = time.monotonic() + wait
    while True:
        try:
            client.ping()
            return client
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            raise Unavailable(f"Redis at {safe_url(url)} refused jobsup's credentials "
                              f"({exc}); fix the user/password in redis.url") from None
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"cannot reach Redis at {safe_url(url)}: {exc}") from None
            log.warning("waiting for Redis at %s: %s", safe_url(url), exc)
            time.sleep(1)


def safe_url(url: str) -> str:
    """The URL without its credentials, for logs and errors."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
