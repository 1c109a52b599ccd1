"""`qexport serve` under the model card's serving protocol on loopback: one text per request,
16 concurrent clients, on SciFact documents and on SciFact queries; tokens/s and p50/p95
latency, next to the offline `Embedder.embed` on the same texts (one call, token-budget
batches), and with auth + metrics on vs off.

    python bench/bench_server.py --artifact /tmp/minilm --docs 800 --clients 16
    python bench/bench_server.py --artifact /tmp/minilm --with-reranker /tmp/rr --seconds 20

The server is a real `qexport serve` subprocess; clients are threads, each with its own httpx
connection. Every response is checked (one finite unit-norm vector, the Embedder's to 1e-4).
Tokens are the server's own `usage.prompt_tokens` (the same count the Embedder feeds).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
from common import DATA, start_serve

KEY = "bench-key"
VERSIONED = ("onnxruntime", "tokenizers", "fastapi", "uvicorn", "h11", "httpx", "prometheus-client")


def _version(dist: str) -> str:
    if dist == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    return version(dist)


def scifact(docs: int) -> dict[str, list[str]]:
    folder = DATA / "scifact"
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        corpus = [json.loads(line) for line in fh][:docs]
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh]
    return {"documents": [f"{d['title']} {d['text']}".strip() for d in corpus], "queries": queries}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact: str, port: int, secure: bool) -> subprocess.Popen:
    env = {"QEXPORT_API_KEY": KEY} if secure else {}
    return start_serve([artifact] + ([] if secure else ["--no-metrics"]), port, env=env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(base: str, texts: list[str], want: np.ndarray, clients: int, secure: bool,
         server_pid: int = 0) -> dict:  # fmt: skip
    """Each text once, one per request, `clients` threads pulling from a shared index."""
    headers = {"Authorization": f"Bearer {KEY}"} if secure else {}
    order = iter(range(len(texts)))
    lat = [0.0] * len(texts)
    tokens = [0] * len(texts)

    def client(_: int) -> None:
        with httpx.Client(base_url=base, timeout=120, headers=headers) as http:
            for i in order:  # next() on a shared iterator is atomic under the GIL
                t0 = time.perf_counter()
                r = http.post("/v1/embeddings", json={"input": texts[i]})
                lat[i] = time.perf_counter() - t0
                r.raise_for_status()
                body = r.json()
                v = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
                assert np.isfinite(v).all() and np.allclose(v, want[i], atol=1e-4), i
                tokens[i] = body["usage"]["prompt_tokens"]

    before = httpx.get(f"{base}/health", timeout=10).json()
    cpu0, own0 = cpu_seconds(server_pid), time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    cpu1, own1 = cpu_seconds(server_pid), time.process_time()
    after = httpx.get(f"{base}/health", timeout=10).json()
    passes = after["batches"] - before["batches"]
    return {"tokens_per_s": sum(tokens) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p95_ms": 1000 * float(np.percentile(lat, 95)), "n": len(texts),
            "texts_per_pass": len(texts) / max(passes, 1),
            "server_cpu_ms_per_text": 1000 * (cpu1 - cpu0) / len(texts),
            "client_cpu_ms_per_text": 1000 * (own1 - own0) / len(texts)}  # fmt: skip


class Offline:
    """Embedder.embed on all texts in one call, and in calls of `rows` texts (the most one
    forward pass of the server holds when `rows` clients send one text each)."""

    def __init__(self, artifact: str, texts: list[str], rows: int) -> None:
        from qexport.runtime import Embedder

        self.emb = Embedder(artifact, device="cpu")
        self.texts, self.rows = texts, rows
        self.tokens = sum(len(r) for r in self.emb.tokenize(texts)[0])
        self.vectors = self.emb.embed(texts)  # also the warm-up

    def whole(self) -> dict:
        start, cpu = time.perf_counter(), time.process_time()
        self.emb.embed(self.texts)
        return {"tokens_per_s": self.tokens / (time.perf_counter() - start), "n": len(self.texts),
                "server_cpu_ms_per_text": 1000 * (time.process_time() - cpu) / len(self.texts)}  # fmt: skip

    def chunked(self) -> dict:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(self.texts), self.rows):
            self.emb.embed(self.texts[i : i + self.rows])
        return {"tokens_per_s": self.tokens / (time.perf_counter() - start), "n": len(self.texts),
                "server_cpu_ms_per_text": 1000 * (time.process_time() - cpu) / len(self.texts)}  # fmt: skip


def measure(artifact: str, name: str, texts: list[str], clients: int, repeats: int) -> list[dict]:
    """Every setting once per round, rounds repeated, best of each kept: load drift on a
    shared machine hits every setting alike."""
    off = Offline(artifact, texts, clients)
    want = off.vectors
    ports = {secure: free_port() for secure in (False, True)}
    procs = {secure: start_server(artifact, ports[secure], secure) for secure in ports}
    runs: dict[str, list[dict]] = {}
    try:
        for secure, port in ports.items():  # warm-up
            load(f"http://127.0.0.1:{port}", texts[:64], want[:64], clients, secure)
        for _ in range(repeats):
            runs.setdefault("offline Embedder.embed", []).append(off.whole())
            runs.setdefault(f"offline, {clients} texts per call", []).append(off.chunked())
            for secure, port in ports.items():
                mode = "serve, auth + metrics" if secure else "serve, no auth, no metrics"
                url = f"http://127.0.0.1:{port}"
                row = load(url, texts, want, clients, secure, procs[secure].pid)
                runs.setdefault(mode, []).append(row)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=30)
    best = {mode: max(rs, key=lambda r: r["tokens_per_s"]) for mode, rs in runs.items()}
    base = best["offline Embedder.embed"]["tokens_per_s"]
    return [
        {"texts": name, "mode": mode, **row, "vs_offline": row["tokens_per_s"] / base}
        for mode, row in best.items()
    ]


def closed_loop(
    base: str, path: str, bodies: list[dict], clients: int, seconds: float, per_body: int
) -> tuple[float, float]:
    """`clients` threads posting bodies in turn for `seconds`: (items/s, p50 ms)."""
    lat: list[float] = []
    stop = time.monotonic() + seconds

    def client(k: int) -> int:
        n = 0
        with httpx.Client(base_url=base, timeout=120) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = c.post(path, json=bodies[(k + n * clients) % len(bodies)])
                assert r.status_code == 200, r.text
                lat.append(time.perf_counter() - t)
                n += 1
        return n

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(client, range(clients)))
    return done * per_body / (time.monotonic() - start), 1000 * statistics.median(lat)


def two_models(emb: str, rr: str, clients: int, seconds: float) -> None:
    """An embedder and a reranker in one process, `clients` clients each at the same time,
    beside each served alone (same run): throughput and p50 of each, and the ratios."""
    sets = scifact(200)
    queries, docs = sets["queries"], sets["documents"]
    emb_bodies = [{"input": q} for q in queries]
    rr_bodies = [{"query": q, "documents": docs[i * 8 : i * 8 + 8]} for i, q in enumerate(queries)]
    rr_bodies = [b for b in rr_bodies if len(b["documents"]) == 8]
    runs = {"embed": ("/v1/embeddings", emb_bodies, 1), "rerank": ("/v1/rerank", rr_bodies, 8)}
    out: dict[str, dict[str, tuple[float, float]]] = {"alone": {}, "together": {}}
    for kind, artifacts in (("embed", [emb]), ("rerank", [rr]), ("both", [emb, rr])):
        port = free_port()
        proc = start_serve([*artifacts, "--no-verify"], port)
        base = f"http://127.0.0.1:{port}"
        try:
            if kind != "both":
                out["alone"][kind] = closed_loop(base, *runs[kind][:2], clients, seconds,
                                                 runs[kind][2])  # fmt: skip
                continue
            with ThreadPoolExecutor(2) as pool:
                futs = {k: pool.submit(closed_loop, base, r[0], r[1], clients, seconds, r[2])
                        for k, r in runs.items()}  # fmt: skip
                out["together"] = {k: f.result() for k, f in futs.items()}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"{clients} clients per model, {seconds:g} s each; embed: one SciFact query per "
        "request (texts/s); rerank: one query + 8 SciFact documents (pairs/s)"
    )
    print(
        "| model | alone items/s | alone p50 ms | together items/s | together p50 ms | "
        "throughput together/alone | p50 together/alone |\n|---|---|---|---|---|---|---|"
    )
    for k in runs:
        (a, pa), (t, pt) = out["alone"][k], out["together"][k]
        print(
            f"| {k} | {a:,.1f} | {pa:,.1f} | {t:,.1f} | {pt:,.1f} | {t / a:.2f} | {pt / pa:.2f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", required=True)
    p.add_argument(
        "--with-reranker",
        default=None,
        metavar="RR",
        help="serve ARTIFACT and RR in one process, 16 clients each, beside each alone",
    )
    p.add_argument("--seconds", type=float, default=20, help="per phase with --with-reranker")
    p.add_argument("--docs", type=int, default=800, help="SciFact documents (first N)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="rounds of every setting (best kept)")
    p.add_argument("--only", choices=("documents", "queries"), default=None)
    args = p.parse_args()
    if args.with_reranker:
        two_models(args.artifact, args.with_reranker, args.clients, args.seconds)
        return
    warnings.filterwarnings("ignore", message=r".*longer than max_length")  # documents > 256
    sets = scifact(args.docs)
    rows = []
    for name, texts in sets.items():
        if args.only in (None, name):
            rows += measure(args.artifact, name, texts, args.clients, args.repeats)
    keys = ["texts", "n", "mode", "tokens_per_s", "p50_ms", "p95_ms", "texts_per_pass",
            "server_cpu_ms_per_text", "client_cpu_ms_per_text", "vs_offline"]  # fmt: skip
    print(f"one text per request, {args.clients} concurrent clients, best of {args.repeats}")
    print("versions: " + ", ".join(f"{m} {_version(m)}" for m in VERSIONED))
    print("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for r in rows:
        cells = [r.get(k) for k in keys]
        print("| " + " | ".join(
            "" if v is None else f"{v:,.2f}" if isinstance(v, float) and v < 10 else
            f"{v:,.0f}" if isinstance(v, float) else str(v) for v in cells) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
