"""`qexport serve` under load on loopback: p50/p95 latency and throughput for 1..N concurrent
clients, each sending requests of a few SciFact queries (short texts, as in search).

    python bench/bench_server.py --artifact /tmp/minilm --clients 1 4 16 --requests 40

The server runs as a real `qexport serve` subprocess; clients are threads with their own
httpx connection. For context, the same requests sent straight to Embedder.embed (no HTTP, one
at a time) are timed too. Every response is checked (shape, finite, unit norm).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def queries() -> list[str]:
    with open(SHARED / "data" / "scifact" / "queries.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: str, port: int, max_wait_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qexport.cli", "-q", "serve", artifact, "--device", "cpu",
           "--port", str(port), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def load(base: str, clients: int, requests: int, per_request: int, qs: list[str]) -> dict:
    def client(seed: int) -> list[float]:
        rng = np.random.default_rng(seed)
        lat = []
        with httpx.Client(base_url=base, timeout=120) as http:
            for _ in range(requests):
                batch = [qs[i] for i in rng.choice(len(qs), per_request, replace=False)]
                t0 = time.perf_counter()
                r = http.post("/v1/embeddings", json={"input": batch, "model": "m"})
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()
                v = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
                assert v.shape[0] == per_request and np.isfinite(v).all()
                assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
        return lat

    before = httpx.get(f"{base}/health").json()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lats = [x for lat in pool.map(client, range(clients)) for x in lat]
    wall = time.perf_counter() - start
    after = httpx.get(f"{base}/health").json()
    n = clients * requests
    batches = after["batches"] - before["batches"]
    return {"clients": clients, "requests": n, "p50_ms": 1000 * statistics.median(lats),
            "p95_ms": 1000 * float(np.percentile(lats, 95)), "req_per_s": n / wall,
            "texts_per_s": n * per_request / wall, "requests_per_forward": n / max(batches, 1)}  # fmt: skip


def direct(artifact: str, requests: int, per_request: int, qs: list[str]) -> dict:
    from qexport.runtime import Embedder

    emb = Embedder(artifact, device="cpu")
    rng = np.random.default_rng(0)
    emb.embed(qs[:per_request])
    lat = []
    start = time.perf_counter()
    for _ in range(requests):
        batch = [qs[i] for i in rng.choice(len(qs), per_request, replace=False)]
        t0 = time.perf_counter()
        emb.embed(batch)
        lat.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {"clients": "Embedder.embed, no HTTP", "requests": requests,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * float(np.percentile(lat, 95)),
            "req_per_s": requests / wall, "texts_per_s": requests * per_request / wall,
            "requests_per_forward": 1.0}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=40, help="per client")
    p.add_argument("--per-request", type=int, default=4, help="texts per request")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    args = p.parse_args()
    qs = queries()
    rows = [direct(args.artifact, args.requests, args.per_request, qs)]
    port = free_port()
    proc = start_server(args.artifact, port, args.max_wait_ms)
    try:
        base = f"http://127.0.0.1:{port}"
        load(base, 2, 5, args.per_request, qs)  # warm-up
        for c in args.clients:
            rows.append(load(base, c, args.requests, args.per_request, qs))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    keys = list(rows[0])
    print(f"{args.per_request} SciFact queries per request, max wait {args.max_wait_ms} ms")
    print("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )


if __name__ == "__main__":
    main()
