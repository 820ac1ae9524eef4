"""A GPU job handler with no dependency: the CUDA driver API through ctypes.

``scripts/gpu-check`` runs it to show that a worker initialises CUDA under the
pool's memory cap, sees only its pinned device, and that the master reads its
device memory through NVML.  ``libcuda.so.1`` comes with the NVIDIA driver, so
nothing is installed for it, and it always matches the driver.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

from worker import JobContext, Permanent


class _Cuda:
    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise Permanent(f"libcuda.so.1 not found ({exc}): no NVIDIA driver here") from None

    def __call__(self, name: str, *args: Any) -> None:
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(text))
            msg = text.value.decode() if text.value else "unknown error"
            raise Permanent(f"{name} failed with CUDA error {rc} ({msg})")


def allocate(payload: dict, ctx: JobContext) -> dict:
    """Initialise CUDA, allocate ``payload["mib"]`` MiB on device 0 (the pinned one),
    touch it, hold it ``payload["hold"]`` seconds, free it."""
    cuda = _Cuda()
    cuda("cuInit", 0)
    count = ctypes.c_int()
    cuda("cuDeviceGetCount", ctypes.byref(count))
    device, context = ctypes.c_int(), ctypes.c_void_p()
    cuda("cuDeviceGet", ctypes.byref(device), 0)
    cuda("cuCtxCreate_v2", ctypes.byref(context), 0, device)
    size = int(payload.get("mib", 256)) * 1024 * 1024
    ptr = ctypes.c_uint64()
    try:
        cuda("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(size))
        cuda("cuMemsetD8_v2", ptr, ctypes.c_ubyte(1), ctypes.c_size_t(size))
        cuda("cuCtxSynchronize")
        ctx.progress(50, f"holding {size} bytes of device memory")
        time.sleep(float(payload.get("hold", 0)))
        cuda("cuMemFree_v2", ptr)
    finally:
        cuda("cuCtxDestroy_v2", context)
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu": ctx.gpu,
            "devices_seen": count.value, "allocated": size, "pid": os.getpid()}
