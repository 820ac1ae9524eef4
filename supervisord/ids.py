"""Job ids that sort by creation time, so a queue ordered by id is FIFO.

16 characters of lowercase Crockford base32: 10 for milliseconds since the
epoch, 4 for a counter within the millisecond, 2 random to keep nodes apart.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


class IdGenerator:
    def __init__(self) -> None:
        self._last_ms = 0
        self._counter = 0
        self._tail = _b32(int.from_bytes(os.urandom(2), "big"), 2)

    def next(self) -> str:
        ms = int(time.time() * 1000)
        if ms <= self._last_ms:
            self._counter += 1
            if self._counter >= 32**4:
                self._last_ms += 1
                self._counter = 0
            ms = self._last_ms
        else:
            self._last_ms = ms
            self._counter = 0
        return _b32(ms, 10) + _b32(self._counter, 4) + self._tail
