"""Server test helpers: a real `qexport serve` subprocess on a free loopback port, or the app
in a uvicorn thread; every wait bounded."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    base: str
    port: int
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def serve_command(artifact: Path | list[Path], *args: str) -> list[str]:
    """`qexport serve` on one artifact or several (one process serving them all)."""
    folders = [str(a) for a in (artifact if isinstance(artifact, list) else [artifact])]
    return [sys.executable, "-m", "qexport.cli", "-q", "serve", *folders, "--device", "cpu",
            *args]  # fmt: skip


@contextlib.contextmanager
def qexport_serve(
    artifact: Path | list[Path],
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """`qexport serve ARTIFACT... --port FREE ARGS...`, up and healthy; stopped on exit."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        serve_command(artifact, "--port", str(port), *args),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )
    served = Served(f"http://127.0.0.1:{port}", port, proc, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, served.log_text()
            try:
                if httpx.get(f"{served.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "qexport serve did not come up"
            time.sleep(0.1)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def serving(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Run `app` with uvicorn in a thread on a free loopback port; yield the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def emb(tiny_artifact):  # type: ignore[no-untyped-def]
    from qexport.runtime import Embedder

    return Embedder(tiny_artifact, device="cpu")


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def metric(base: str, sample: str, headers: dict[str, str] | None = None) -> float:
    """The value of one Prometheus sample (`name{labels}` exactly as exposed), 0 if absent."""
    text = httpx.get(f"{base}/metrics", timeout=10, headers=headers).text
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == sample:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
