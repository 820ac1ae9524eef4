"""GPUs through NVML: which devices a box has, and how much device memory each process holds.

NVML comes from the NVIDIA driver (``libnvidia-ml.so``), bound by ``nvidia-ml-py``
(imported as ``pynvml``), which loads the library only at ``nvmlInit``.  A box
without the driver, or with a driver but no device, simply has no GPUs: that is
said once in the log, and ``gpus = "auto"`` then pins nothing.  NVML is asked
only from the master, never from a worker, so a worker that never touches CUDA
never loads the driver.

Device indexes are NVML's, which are in PCI bus order; workers pinned to a device
get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA numbers the devices the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("jobsup.gpus")


@dataclass(frozen=True, slots=True)
class DeviceReading:
    index: int
    used: int  # bytes of device memory in use, by anyone
    total: int
    utilization: float | None  # 0..1 over NVML's last sample period; None if unsupported


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of every device: its memory and load, and each process's share."""

    devices: tuple[DeviceReading, ...] = ()
    processes: Mapping[int, int] = field(default_factory=dict)  # pid -> bytes, all devices


def tree_gpu_memory(pids: Iterable[int], sample: GpuSample) -> int:
    """GPU memory held by a set of processes (a worker and its descendants), in bytes."""
    return sum(sample.processes.get(pid, 0) for pid in set(pids))


class Gpus:
    """The NVML session of the master: discovered once at start, read by the watchdog."""

    def __init__(self, nvml: Any = None, handles: tuple = (), why: str = "") -> None:
        self._nvml = nvml
        self._handles = handles
        self.why = why  # why there are no GPUs, when there are none

    @property
    def devices(self) -> list[int]:
        return list(range(len(self._handles)))

    @property
    def available(self) -> bool:
        """Whether NVML answers at all (it may still have found no device)."""
        return self._nvml is not None

    @classmethod
    def open(cls) -> Gpus:
        """Start NVML and find the devices; never raises: no NVML means no GPUs."""
        try:
            import pynvml
        except ImportError:
            return cls(why="nvidia-ml-py (pynvml) is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return cls(why=f"NVML could not start ({exc}): no NVIDIA driver on this box?")
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = tuple(pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count))
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            return cls(why=f"NVML could not list the devices ({exc})")
        if not handles:
            return cls(pynvml, (), why="NVML found no device")
        return cls(pynvml, handles)

    def describe(self) -> str:
        if not self._handles:
            return f"no GPUs: {self.why}"
        names = []
        for i, h in enumerate(self._handles):
            try:
                name = self._nvml.nvmlDeviceGetName(h)
            except self._nvml.NVMLError:
                name = "?"
            names.append(f"{i}: {name.decode() if isinstance(name, bytes) else name}")
        return f"{len(names)} GPU(s) through NVML: " + ", ".join(names)

    def sample(self) -> GpuSample:
        """Read every device; a device that fails to answer is left out, logged once."""
        if not self._handles:
            return GpuSample()
        nv = self._nvml
        devices, processes = [], {}
        for index, h in enumerate(self._handles):
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                held = _processes(nv, h)
            except nv.NVMLError as exc:
                log.warning("GPU %d: NVML read failed (%s)", index, exc)
                continue
            try:
                util: float | None = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            except nv.NVMLError:
                util = None
            devices.append(DeviceReading(index, int(mem.used), int(mem.total), util))
            for pid, used in held.items():
                processes[pid] = processes.get(pid, 0) + used
        return GpuSample(tuple(devices), processes)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None
            self._handles = ()


def _processes(nv: Any, handle: Any) -> dict[int, int]:
    """pid -> device memory on one device.  A process that both computes and draws is
    listed twice with the same allocation: count it once.  ``usedGpuMemory`` is None
    where the driver cannot tell (some virtualised set-ups): then it counts as 0."""
    out: dict[int, int] = {}
    for read in (nv.nvmlDeviceGetComputeRunningProcesses,
                 nv.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            procs = read(handle)
        except nv.NVMLError_NotSupported:
            continue
        for p in procs:
            used = p.usedGpuMemory or 0
            out[p.pid] = max(out.get(p.pid, 0), int(used))
    return out
