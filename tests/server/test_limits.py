"""Oversized requests against a real `qexport serve`: refused while reading (chunked bodies
too) or before tokenising everything, with the server's RSS measured by psutil meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.server.conftest import httpx, metric, qexport_serve

psutil = pytest.importorskip("psutil")

MiB = 1 << 20
GROWTH_LIMIT = 200 * MiB


def peak_rss_during(pid: int, action: Callable[[], object]) -> tuple[object, int, int]:
    """(action's result, RSS before, peak RSS while it ran), sampled every 5 ms."""
    proc = psutil.Process(pid)
    before = proc.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = action()
    finally:
        done.set()
        thread.join(timeout=10)
    peak = max(peak, proc.memory_info().rss)
    return result, before, peak


def chunks(total: int, size: int = MiB) -> Iterator[bytes]:
    yield b'{"input": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"}'


def post_or_broken(url: str, **kw: object) -> httpx.Response | str:
    """The response, or how the connection broke (the server may close while we still send)."""
    try:
        return httpx.post(url, timeout=60, **kw)  # type: ignore[arg-type]
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        return type(exc).__name__


def test_oversized_bodies_and_texts_cost_little_memory(tiny_artifact, tmp_path):
    with qexport_serve(tiny_artifact, tmp_path, "--max-request-tokens", "4096") as srv:
        url = f"{srv.base}/v1/embeddings"
        # 70 MiB sent chunked (no Content-Length): refused once 4 MiB have arrived
        r, before, peak = peak_rss_during(
            srv.proc.pid, lambda: post_or_broken(url, content=chunks(70 * MiB))
        )
        if isinstance(r, httpx.Response):
            assert r.status_code == 413, r.text
            assert "request body passed 4194304 bytes" in r.json()["error"]["message"]
        refused = 'qexport_refusals_total{reason="body_too_large"}'
        assert metric(srv.base, refused) == 1.0, r
        print(f"RSS growth {(peak - before) / MiB:.0f} MiB")
        assert peak - before < GROWTH_LIMIT, (before, peak)

        # Content-Length over the limit: refused before reading
        r = post_or_broken(url, content=b"x" * (4 * MiB + 1))
        assert metric(srv.base, refused) == 2.0, r

        # one 3 MiB text: tokenised from a prefix only, 413 above 4096 tokens
        big = "word " * (3 * MiB // 5)
        r, before, peak = peak_rss_during(
            srv.proc.pid, lambda: httpx.post(url, json={"input": big}, timeout=60)
        )
        assert r.status_code == 413, r.text  # type: ignore[union-attr]
        assert "at most 4096 per request" in r.json()["error"]["message"]  # type: ignore[union-attr]
        print(f"RSS growth {(peak - before) / MiB:.0f} MiB")
        assert peak - before < GROWTH_LIMIT, (before, peak)

        # 3 MiB in 2048 texts: counting stops at the first group past the limit
        many = ["word " * 300] * 2048
        r, before, peak = peak_rss_during(
            srv.proc.pid, lambda: httpx.post(url, json={"input": many}, timeout=60)
        )
        assert r.status_code == 413, r.text  # type: ignore[union-attr]
        print(f"RSS growth {(peak - before) / MiB:.0f} MiB")
        assert peak - before < GROWTH_LIMIT, (before, peak)

        # still serving
        ok = httpx.post(url, json={"input": "still here"}, timeout=60)
        assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 128


def test_bodies_of_millions_of_tiny_strings_are_refused_before_parsing(tiny_artifact, tmp_path):
    """json.loads of 8 MiB of `"ab",` would cost ~100 MB; the values are counted first."""
    body = b'{"input": [' + b'"ab",' * ((3 * MiB) // 5) + b'"ab"]}'
    legit = ['word "quoted" \\ back ' * 2000] * 40  # 1.7 MiB with escapes: must pass the scan
    with qexport_serve(tiny_artifact, tmp_path, "--max-request-tokens", "4096") as srv:
        url = f"{srv.base}/v1/embeddings"
        headers = {"content-type": "application/json"}
        post = lambda: httpx.post(url, content=body, headers=headers, timeout=60)  # noqa: E731
        r, before, peak = peak_rss_during(srv.proc.pid, post)
        assert r.status_code == 413, r.text  # type: ignore[union-attr]
        assert "holds more than 8448 JSON values" in r.json()["error"]["message"]  # type: ignore[union-attr]
        print(f"RSS growth {(peak - before) / MiB:.0f} MiB")
        assert peak - before < 50 * MiB, (before, peak)
        r = httpx.post(url, json={"input": legit}, timeout=60)
        assert r.status_code == 413 and "tokens" in r.json()["error"]["message"], r.text
