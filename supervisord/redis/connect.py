"""Opening the daemon's Redis: the embedded server, a URL or Sentinel, with clear errors.

With Sentinel the daemon never holds a master's address itself: redis-py's
Sentinel pool asks the sentinels each time it opens a connection, so a
connection opened after a failover (the loop's write pipe reconnecting, a read
thread's next command) reaches the promoted master.
"""

from __future__ import annotations

import logging
import time

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

from supervisord.config import RedisConfig
from supervisord.errors import Unavailable
from supervisord.redis import sentinel
from supervisord.redis.replicas import Replicas, ReplicasBehind

log = logging.getLogger("jobsup.master")


def connect(url: str, rc: RedisConfig, wait: float = 30.0) -> redis.Redis:
    """A client that answered PING; waits up to ``wait`` s for a Redis still starting."""
    if sentinel.is_sentinel(url):
        client = master_client(url, rc.socket_timeout)
    else:
        client = redis.Redis.from_url(url, socket_timeout=rc.socket_timeout,
                                      socket_connect_timeout=rc.socket_timeout)
    replicas = Replicas(rc.min_replicas, rc.replica_timeout)
    deadline = time.monotonic() + wait
    while True:
        try:
            client.ping()
            if replicas.wanted:  # a WAIT after no write: how many replicas are attached
                replicas.confirmed([client.execute_command(*replicas.command())])
            return client
        except ReplicasBehind as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"Redis at {safe_url(url)}: {exc}; start its replicas "
                                  "(or lower redis.min_replicas)") from None
            log.warning("waiting for replicas of Redis at %s: %s", safe_url(url), exc)
            time.sleep(1)
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            raise Unavailable(f"Redis at {safe_url(url)} refused jobsup's credentials "
                              f"({exc}); fix the user/password in redis.url") from None
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"cannot reach Redis at {safe_url(url)}: {exc}") from None
            log.warning("waiting for Redis at %s: %s", safe_url(url), exc)
            time.sleep(1)


def master_client(url: str, socket_timeout: float) -> redis.Redis:
    """A client whose every new connection goes to the service's current master."""
    target = sentinel.parse(url)
    # redis-py reads its own options from a plain URL: the same spellings as redis://.
    options = parse_url(f"{'rediss' if target.tls else 'redis'}://localhost/?{target.query}")
    for key in ("host", "port", "connection_class", "db", "username", "password"):
        options.pop(key, None)
    if target.tls:
        options["ssl"] = True
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    tls = {k: v for k, v in options.items() if k.startswith("ssl")}
    auth = {k.removeprefix("sentinel_"): v for k, v in target.sentinel_auth.items()}
    manager = Sentinel(target.sentinels, sentinel_kwargs={**timeouts, **tls, **auth},
                       **timeouts)
    return manager.master_for(target.service, db=target.db, username=target.username,
                              password=target.password, **{**options, **timeouts})


def safe_url(url: str) -> str:
    """The URL without its credentials, for logs and errors."""
    url, _, query = url.partition("?")
    if query:
        url += "?***" if "password" in query else f"?{query}"
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
