"""Peak host and GPU memory of this process, for benchmarks, tests and the validator
(stdlib only; NVML's pynvml is imported by GpuMemory alone)."""

from __future__ import annotations

import os
import sys
import threading
import time


def peak_rss_mb() -> float | None:
    """Peak RSS of this process in MB: VmHWM on Linux (per address space, so unlike ru_maxrss it
    does not inherit the parent's high-water mark across fork + exec), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class GpuMemory:
    """Peak GPU memory of this process, sampled with NVML every 2 ms (onnxruntime has no
    allocator statistics of its own). Where NVML does not list this process's pid (seen in a
    VM with a lent H100), it falls back to the device's used memory minus its value when
    sampling started, which is right only while no other process uses the GPU: `source` says
    which one was read. Bytes throughout."""

    def __init__(self, device_index: int = 0) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nv = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self.name: str = name.decode() if isinstance(name, bytes) else name
        self._base = self._device_used()
        # a process without a CUDA context yet is not listed: create this before the engine
        self.source = "process" if self._process_used() is not None else "device - baseline"
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _device_used(self) -> int:
        return int(self._nv.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _process_used(self) -> int | None:
        for p in self._nv.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if p.pid == os.getpid():
                return int(p.usedGpuMemory or 0)
        return None

    def used(self) -> int:
        if self.source == "process":
            return self._process_used() or 0
        return self._device_used() - self._base

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.002)

    def reset(self) -> None:
        time.sleep(0.01)  # let the sampler see the end of what ran before
        self.peak = self.used()

    def read(self) -> int:
        time.sleep(0.01)
        return max(self.peak, self.used())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
