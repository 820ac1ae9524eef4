"""CurveZMQ on the API: allowed keys get in, others get Unauthorized; config rules."""

from __future__ import annotations

import grp
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq.auth

from supervisord import config
from supervisord.client import Client
from supervisord.errors import ConfigError, Unauthorized, Unavailable
from tests.conftest import ROOT


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


# -- local users: ipc socket files ------------------------------------------------------
def test_abstract_ipc_sockets_are_refused():
    for key in ("endpoint", "events"):
        with pytest.raises(ConfigError) as err:
            config.validate({"api": {key: "ipc://@jobsup"}})
        msg = " ".join(e["msg"] for e in err.value.errors)
        assert "abstract unix socket" in msg and "any local user" in msg, msg


def test_socket_mode_rules():
    assert config.validate({"api": {"socket_mode": "0660"}}).api.socket_mode == 0o660
    assert config.validate({"api": {"socket_mode": 0o640}}).api.socket_mode == 0o640
    assert config.validate({}).api.socket_mode == 0o600
    with pytest.raises(ConfigError) as err:
        config.validate({"api": {"socket_mode": 660}})  # decimal: meant "0660"
    assert err.value.errors[0]["loc"] == "api.socket_mode"
    assert '"0660"' in err.value.errors[0]["msg"]
    with pytest.raises(ConfigError) as err:
        config.validate({"api": {"socket_mode": "0666"}})
    assert "every local user" in err.value.errors[0]["msg"]
    assert config.validate({"api": {"socket_mode": "0666", "insecure": True}}).api.insecure
    with pytest.raises(ConfigError):
        config.validate({"api": {"socket_group": "bad group!"}})


def _own_group() -> str:
    try:
        return grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        return str(os.getgid())


@pytest.mark.timeout(60)
def test_ipc_sockets_get_mode_and_group_and_go_away_on_stop(daemon_factory):
    d = daemon_factory(api={"socket_mode": "0660", "socket_group": _own_group()})
    files = [Path(e.removeprefix("ipc://")) for e in (d.endpoint, d.events)]
    for f in files:
        st = f.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        assert st.st_gid == os.getgid()
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 2, "b": 2}), timeout=20).result == 4
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert [f for f in files if f.exists()] == []


@pytest.mark.timeout(60)
def test_default_ipc_socket_is_owner_only(daemon):
    st = Path(daemon.endpoint.removeprefix("ipc://")).stat()
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)


@pytest.mark.timeout(60)
def test_missing_socket_group_is_a_clear_start_error(daemon_factory):
    missing = next(f"nogroup{n}" for n in range(1000) if not _group_exists(f"nogroup{n}"))
    d = daemon_factory(start=False, api={"socket_group": missing})
    d.start(wait=False)
    assert d.wait_exit(30) == 2
    out = d.log.read_text()
    assert "api.socket_group" in out and f"no group named {missing!r}" in out, out
    assert not Path(d.endpoint.removeprefix("ipc://")).exists()


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_config_check_names_the_abstract_socket(tmp_path: Path):
    path = tmp_path / "abstract.toml"
    path.write_text('[api]\nendpoint = "ipc://@jobsup-api"\n')
    res = subprocess.run([sys.executable, "-m", "supervisord", "config", "check", str(path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 2, res
    assert "api: endpoint ipc://@jobsup-api is an abstract unix socket" in res.stderr, res.stderr
