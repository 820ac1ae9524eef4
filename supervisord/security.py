"""CurveZMQ for an API that listens beyond loopback.

With ``api.curve_secret_key`` set, both API sockets are Curve servers and a
ZAP authenticator admits only the public keys found in
``api.curve_allowed_clients`` (a directory of ``zmq.auth`` certificate files).
"""

from __future__ import annotations

from collections.abc import Iterable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from supervisord.config import ApiConfig

_authenticators: list[ThreadAuthenticator] = []


def secure_api(api: ApiConfig, ctx: zmq.Context, socks: Iterable[zmq.Socket]) -> None:
    if not api.curve_secret_key:
        return
    public, secret = zmq.auth.load_certificate(api.curve_secret_key)
    if secret is None:
        raise ValueError(f"{api.curve_secret_key} holds no secret key")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=api.curve_allowed_clients)
    _authenticators.append(auth)
    for sock in socks:
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
