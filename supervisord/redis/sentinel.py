"""``redis+sentinel://`` URLs: which sentinels to ask for a service's master, and how.

Parsed here without importing redis-py, so that checking a config stays cheap;
``redis.connect`` builds the client from what this finds.

    redis+sentinel://[[user]:password@]h1:26379,h2:26379/SERVICE[/DB][?options]
    rediss+sentinel://...   TLS to the sentinels and to the master

The credentials are the master's (and its replicas'); sentinels that need a
password of their own take ``sentinel_password`` (and ``sentinel_username``) in
the query.  The other query options are redis-py's, as in a ``rediss://`` URL
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode

SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
DEFAULT_PORT = 26379
_SHAPE = ("redis+sentinel://[:password@]host:26379,host:26379/SERVICE[/DB]")
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[\w.\-]+))(?::(?P<port>\d+))?$")
_SERVICE = re.compile(r"^[\w.\-]+$")
_OWN = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_auth: dict[str, str] = field(default_factory=dict)
    query: str = ""  # redis-py's connection options, as written


def is_sentinel(url: str) -> bool:
    return url.startswith(SCHEMES)


def parse(url: str) -> SentinelUrl:
    """Raises ValueError saying what is wrong with the URL and what it should look like."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    auth, at, where = rest.rpartition("@")
    if not at:
        auth, where = "", rest
    hosts, _, path = where.partition("/")
    sentinels = []
    for part in hosts.split(","):
        match = _HOST.match(part.strip())
        if not match:
            raise ValueError(f"{part.strip() or '(empty)'!r} is not a sentinel address; "
                             f"write host:port, comma-separated, as in {_SHAPE}")
        port = int(match.group("port") or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"sentinel port {port} is out of range (1-65535)")
        sentinels.append((match.group("v6") or match.group("name"), port))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError(f"the URL names no Sentinel service (the name in `sentinel monitor "
                         f"NAME ...`); write it after the addresses, as in {_SHAPE}")
    if not _SERVICE.match(service):
        raise ValueError(f"{service!r} is not a Sentinel service name (letters, digits, "
                         "_ . - only)")
    if db and not db.isdigit():
        raise ValueError(f"the database after the service must be a number, not {db!r}")
    username, _, password = auth.partition(":")
    options = parse_qsl(query, keep_blank_values=True)
    own = {k: v for k, v in options if k in _OWN}
    rest_query = urlencode([(k, v) for k, v in options if k not in _OWN])
    return SentinelUrl(sentinels, service, int(db or 0), unquote(username) or None,
                       unquote(password) or None, scheme == "rediss+sentinel", own,
                       rest_query)

