"""Sizes and durations as an operator reads them, for ``jobsup status`` and ``jobsup top``."""

from __future__ import annotations


def size(n: float | None) -> str:
    """Bytes in binary units: '512B', '1.5GiB'; '-' for none or zero."""
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def gpu_memory(n: int | None) -> str:
    """'-' where NVML is not read; 0B for a worker that holds no GPU memory."""
    if n is None:
        return "-"
    return size(n) if n else "0B"


def duration(seconds: float | None) -> str:
    """'42s', '3m05s', '2h07m', '3d04h'."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
