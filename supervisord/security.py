"""CurveZMQ for an API that listens beyond loopback.

With ``api.curve_secret_key`` set, both API sockets are Curve servers and a
ZAP authenticator admits only the public keys found in
``api.curve_allowed_clients`` (a directory of ``zmq.auth`` certificate files),
read once at start, and the keys the daemon made for its own children (the
web process).
"""

from __future__ import annotations

from collections.abc import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from supervisord.config import ApiConfig

_authenticators: list[ThreadAuthenticator] = []


class _Allowed:
    """The public keys admitted: the operator's directory plus the daemon's own."""

    def __init__(self, location: str, extra: Iterable[bytes]) -> None:
        self.keys = set(zmq.auth.load_certificates(location)) | set(extra)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def secure_api(api: ApiConfig, ctx: zmq.Context, socks: Iterable[zmq.Socket],
               own_clients: Iterable[bytes | None] = ()) -> None:
    """``own_clients``: Z85 public keys of the daemon's own children, admitted too."""
    if not api.curve_secret_key:
        return
    public, secret = zmq.auth.load_certificate(api.curve_secret_key)
    if secret is None:
        raise ValueError(f"{api.curve_secret_key} holds no secret key")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    assert api.curve_allowed_clients is not None  # the config requires it
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowed(
        api.curve_allowed_clients, (k for k in own_clients if k)))
    _authenticators.append(auth)
    for sock in socks:
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
