"""The loop's one wait: plain fds and ZeroMQ sockets in one ``poll`` system call.

``zmq.Poller`` asks every ZeroMQ socket for its events before and after it
polls, and each such ask is a ``poll`` of the socket's mailbox: with three
ZeroMQ sockets, seven system calls a pass where one waits.  Here ZeroMQ
sockets are polled by their notification fd (``ZMQ_FD``), which only signals
that something changed, and asked for their events only when that fd fires,
or, for sockets the loop also writes to (``always``), once before sleeping:
a send may take in the wake-up of a message that arrived meanwhile, and the
fd would then not signal it again.  The fd signals a new message only once a
read has found the socket empty, so the loop reads a socket to ``EAGAIN``
whenever it is ready, and once at start.
"""

from __future__ import annotations

import select

import zmq

_IN = select.POLLIN | select.POLLHUP | select.POLLERR
# Plain ints: pyzmq's flags are IntFlag members, whose operators run in Python.
POLLIN, POLLOUT, EVENTS, RCVMORE = (int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.EVENTS),
                                   int(zmq.RCVMORE))
_FD = int(zmq.FD)


class Poller:
    """Tolerant of fds already gone; reports ``zmq.POLLIN``/``zmq.POLLOUT`` flags."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._zmq: dict[int, zmq.Socket] = {}  # notification fd -> socket
        self._always: list[zmq.Socket] = []

    def add(self, what: int | zmq.Socket, always: bool = False) -> None:
        """Watch an fd, or a ZeroMQ socket; ``always``: the loop also sends on it."""
        if isinstance(what, zmq.Socket):
            fd = what.getsockopt(_FD)
            self._zmq[fd] = what
            if always:
                self._always.append(what)
            what = fd
        self._poll.register(what, select.POLLIN)

    def want_write(self, fd: int, on: bool) -> None:
        self._poll.modify(fd, select.POLLIN | select.POLLOUT if on else select.POLLIN)

    def remove(self, fd: int) -> None:
        try:
            self._poll.unregister(fd)
        except KeyError:
            pass

    def poll(self, timeout_ms: int) -> dict:
        ready: dict = {}
        for sock in self._always:
            if sock.getsockopt(EVENTS) & POLLIN:
                ready[sock] = POLLIN
        for fd, events in self._poll.poll(0 if ready else timeout_ms):
            sock = self._zmq.get(fd)
            if sock is None:
                ready[fd] = (POLLIN if events & _IN else 0) | (
                    POLLOUT if events & select.POLLOUT else 0)
            elif sock not in ready and sock.getsockopt(EVENTS) & POLLIN:
                ready[sock] = POLLIN
        return ready
