"""Job ids that sort by creation time, so a queue ordered by id is FIFO.

16 characters of lowercase Crockford base32: 10 for milliseconds since the
epoch, 4 for a counter within the millisecond, 2 random to keep nodes apart.
Bulk submits make thousands a millisecond, so the prefix is built once per
millisecond and the counter comes from a lookup table.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 characters


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
        self._prefix = ""
        self._tail = _b32(int.from_bytes(os.urandom(2), "big"), 2)

    def next(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms > self._last_ms:
            self._last_ms, self._counter = ms, 0
            self._prefix = _b32(ms, 10)
        else:
            self._counter += 1
            if self._counter >= 1 << 20:  # a million in one millisecond: borrow the next
                self._last_ms, self._counter = self._last_ms + 1, 0
                self._prefix = _b32(self._last_ms, 10)
        c = self._counter
        return self._prefix + _PAIRS[c >> 10] + _PAIRS[c & 1023] + self._tail
