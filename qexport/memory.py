"""Peak host memory of this process, for benchmarks, tests and the validator (stdlib only)."""

from __future__ import annotations

import sys


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
