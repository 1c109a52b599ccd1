"""The environment block of a report: machine, GPU, library versions, providers used."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any

from ..util import library_versions


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi (empty when there is none)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return (
        [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0
        else []
    )


def collect(providers_used: list[str], reference_device: str | None = None) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpus": gpu_names(),
        "libraries": library_versions(),
        "onnxruntime_available_providers": ort.get_available_providers(),
        "onnxruntime_providers_used": providers_used,
        "reference_device": reference_device,
        "threads_env": {
            k: os.environ[k]
            for k in ("QEXPORT_THREADS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
            if k in os.environ
        },
    }
