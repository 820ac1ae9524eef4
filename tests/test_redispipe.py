"""supervisord.redis.pipe against a real redis-server: writes in flight, in order."""

from __future__ import annotations

import time

import pytest
import redis

from supervisord.redis.pipe import RedisPipe, read_pipelined


@pytest.fixture
def client(redis_server):
    c = redis_server.client()
    yield c
    c.close()


def wait_readable(pipe: RedisPipe, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pipe.more():
        assert time.monotonic() < deadline, "no reply from Redis"
        time.sleep(0.001)


def test_two_writes_in_flight_come_back_in_order(client):
    pipe = RedisPipe(client, depth=2)
    pipe.send([("SET", "k", "first"), ("INCR", "n")], "one")
    assert pipe.busy and not pipe.full
    pipe.send([("GET", "k"), ("INCR", "n"), ("HGET", "k", "x")], "two")  # the last one errs
    assert pipe.full
    assert pipe.contexts() == ["one", "two"]

    replies, context = pipe.receive()
    assert (context, replies) == ("one", [b"OK", 1])
    wait_readable(pipe)  # the second write's replies are already on their way
    replies, context = pipe.receive()
    assert context == "two"
    assert replies[:2] == [b"first", 2]
    assert isinstance(replies[2], redis.ResponseError)  # in place, not raised
    assert not pipe.busy and not pipe.more()


def test_a_lost_connection_gives_back_every_write_in_flight(client, redis_server):
    pipe = RedisPipe(client, depth=2)
    pipe.send([("CLIENT", "SETNAME", "jobsup-pipe")], "name")
    assert pipe.receive() == ([b"OK"], "name")
    pipe.send([("BLPOP", "never", 0)], "blocked")  # keeps the reply back
    pipe.send([("INCR", "n")], "behind")
    other = redis_server.client()
    try:
        assert other.client_kill_filter(_type=None, skipme=True, laddr=None) >= 1
    finally:
        other.close()
    with pytest.raises(redis.ConnectionError):
        pipe.receive()
    assert pipe.abandon() == ["blocked", "behind"]
    assert not pipe.busy
    pipe.send([("INCR", "n")], "after")  # a fresh connection
    assert pipe.receive()[0][0] in (1, 2)


def test_read_pipelined_in_chunks(client):
    client.mset({f"k{i}": i for i in range(25)})
    got = read_pipelined(client, [("GET", f"k{i}") for i in range(25)] + [("GET", "none")],
                         chunk=10)
    assert got == [str(i).encode() for i in range(25)] + [None]
