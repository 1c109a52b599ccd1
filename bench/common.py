"""What every bench script shares: the repository root and the shared data folder.

Bench scripts run as `python bench/NAME.py`, so this folder is on sys.path and they import it as
`from common import SHARED`. The standard library only: some workers run in a virtualenv
without qexport.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tokenizers (qwen3-embedding/0.6B, ...) and eval sets (data/scifact, data/stsb); as tests/
SHARED = Path(os.environ.get("QEXPORT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


def start_serve(
    args: list[str], port: int, *, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.Popen:
    """`qexport serve ARGS --device cpu --port PORT` as a subprocess, returned once /health
    answers 200 (RuntimeError after 300 s or when it exits). `env` adds to the environment;
    `cwd` runs it from another checkout (`python -m` puts the working directory first)."""
    import httpx  # the bench scripts that serve have it; common itself stays stdlib-only

    cmd = [sys.executable, "-m", "qexport.cli", "-q", "serve", *args, "--device", "cpu",
           "--port", str(port)]  # fmt: skip
    environ = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=environ, cwd=cwd)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"qexport serve {' '.join(args)} did not start (exit {proc.poll()})")
