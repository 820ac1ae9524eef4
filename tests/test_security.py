"""CurveZMQ on the API: allowed keys get in, others get Unauthorized; config rules."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import zmq.auth

from supervisord import config
from supervisord.client import Client
from supervisord.errors import ConfigError, Unauthorized, Unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_curve_allows_listed_clients_only(daemon_factory, tmp_path: Path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    _, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    _, stranger_secret = zmq.auth.create_certificates(keys, "stranger")
    Path(client_public).rename(allowed / "client.key")
    server_public = keys / "server.key"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    d = daemon_factory(start=False, api={
        "endpoint": endpoint, "events": f"tcp://127.0.0.1:{free_port()}",
        "curve_secret_key": str(server_secret), "curve_allowed_clients": str(allowed)})
    d.endpoint = endpoint
    d.client = lambda **kw: Client(endpoint, curve_server_key=str(server_public),
                                   curve_client_cert=str(client_secret), **kw)
    d.start()
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 1, "b": 2}), timeout=20).result == 3

    with pytest.raises(Unauthorized), Client(endpoint, curve_server_key=str(server_public),
                                             curve_client_cert=str(stranger_secret),
                                             connect_timeout=3) as c:
        c.ping()
    # A client without Curve at all cannot talk to it either.
    with pytest.raises(Unavailable), Client(endpoint, connect_timeout=1, timeout=1) as c:
        c.ping()


def test_public_endpoint_needs_curve_or_insecure():
    with pytest.raises(ConfigError) as err:
        config.validate({"api": {"endpoint": "tcp://0.0.0.0:7700"}})
    assert any("curve_secret_key" in e["msg"] for e in err.value.errors)
    cfg = config.validate({"api": {"endpoint": "tcp://0.0.0.0:7700",
                                   "events": "tcp://0.0.0.0:7701", "insecure": True}})
    assert cfg.api.insecure
