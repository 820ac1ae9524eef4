"""An external Redis with credentials, by URL; a wrong password is a clear start-up error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from supervisord.redis.embedded import find_server
from tests.conftest import wait_for


@pytest.fixture
def password_redis(tmp_path: Path):
    sock = tmp_path / "auth-redis.sock"
    proc = subprocess.Popen(
        [find_server(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "600",
         "--dir", str(tmp_path), "--save", "", "--appendonly", "no",
         "--user", "jobsup", "on", ">s3cret", "~*", "&*", "+@all",
         "--requirepass", "admin-only"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up() -> bool:
        try:
            return redis.Redis(unix_socket_path=str(sock), username="jobsup",
                               password="s3cret").ping()
        except (redis.ConnectionError, redis.AuthenticationError, FileNotFoundError):
            return False
    wait_for(up, 10, what="password-protected redis-server")
    yield sock
    proc.kill()
    proc.wait(5)


@pytest.mark.timeout(60)
def test_daemon_uses_url_credentials(daemon_factory, password_redis: Path):
    d = daemon_factory(redis_url=f"unix://jobsup:s3cret@{password_redis}")
    with d.client() as c:
        assert c.wait(c.submit("add", {"a": 20, "b": 22}), timeout=20).result == 42
    r = redis.Redis(unix_socket_path=str(password_redis), username="jobsup", password="s3cret")
    assert r.exists("jobsup:idx:all")


@pytest.mark.timeout(60)
def test_wrong_password_fails_clearly(daemon_factory, password_redis: Path):
    d = daemon_factory(start=False, redis_url=f"unix://jobsup:wrong@{password_redis}")
    d.start(wait=False)
    assert d.wait_exit(40) != 0
    log = d.log.read_text()
    assert "invalid username-password pair" in log.lower() or "auth" in log.lower(), log[-2000:]
