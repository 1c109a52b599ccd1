"""`qexport serve` on a reranker of the Qwen3-Reranker-0.6B shape: 16 concurrent clients, each
request a SciFact query with 8 documents; pairs/s against the offline `Reranker` on the same
requests, with this checkout's server and a baseline checkout's (today's main) in the same
run; and a one-document request sent while another client's 400-document request runs.

    flock /tmp/qexport-heavy.lock python bench/bench_rerank_server.py --layers 1 \\
        --baseline /work/wt-srvbase --json OUT.json

The model is `random:qwen3-reranker-0.6b` (the 0.6B widths: hidden 1024, 16/8 heads of 128,
FFN 3072, vocab 151,669, tied embeddings; seeded weights) with --layers of its 28 layers,
written as a hub checkpoint with the real reranker tokenizer and exported fp32 (max length
8192). Requests: `qexport.validate.checks_rerank.beir_groups` (a seeded sample of judged SciFact
queries, each with its relevant abstracts + the abstracts sharing the most words with it).
Each server is a real `qexport serve` subprocess (PYTHONPATH = its checkout); clients are
threads with their own httpx connection; every answer is checked against the offline scores
(1e-4). Offline modes: one `Reranker.score` call per request (the same requests, one at a
time) and all pairs in one `Reranker.logits_for_ids` call (token-budget batches of up to 128
rows). Passes are the server's `qexport_batch_rows_count`. Every setting runs once per round,
best of --repeats rounds kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from bench_server import _version, cpu_seconds, free_port
from common import DATA, REPO, SHARED, start_serve

sys.path.insert(0, str(REPO))

VERSIONED = ("onnxruntime", "tokenizers", "fastapi", "uvicorn", "httpx", "numpy")
Groups = list[tuple[str, list[str]]]


def build(out: Path, layers: int) -> Path:
    """The fp32 artifact of the 0.6B shape with `layers` layers (kept for reruns)."""
    import tempfile

    from qexport.export.api import ExportOptions, export_onnx
    from qexport.export.random import write_checkpoint
    from qexport.manifest import MANIFEST_NAME

    if (out / MANIFEST_NAME).is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="bench-rr-server.", dir="/tmp") as tmp:
        ckpt = write_checkpoint(
            "qwen3-reranker-0.6b", Path(tmp) / "Qwen3-Reranker-0.6B", layers=layers,
            tokenizer=SHARED / "qwen3-reranker" / "0.6B",
        )  # fmt: skip
        export_onnx(str(ckpt), out, ExportOptions(progress=False))
    return out


def start_server(artifact: Path, checkout: str, port: int) -> subprocess.Popen:
    return start_serve([str(artifact)], port, env={"PYTHONPATH": checkout}, cwd=checkout)


def passes(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("qexport_batch_rows_count "):
            return float(line.split()[1])
    return 0.0


def post(http: httpx.Client, query: str, docs: list[str]) -> np.ndarray:
    r = http.post("/v1/rerank", json={"query": query, "documents": docs})
    r.raise_for_status()
    got = np.full(len(docs), np.nan)
    for x in r.json()["results"]:
        got[x["index"]] = x["relevance_score"]
    return got


def load(base: str, groups: Groups, want: list[np.ndarray], clients: int, pid: int) -> dict:
    """Each request once, `clients` threads pulling from a shared index, each with its own
    connection (opened before the clock starts)."""
    order = iter(range(len(groups)))
    lat = [0.0] * len(groups)
    https = [httpx.Client(base_url=base, timeout=1200) for _ in range(clients)]
    for http in https:
        http.get("/v1/models").raise_for_status()

    def client(http: httpx.Client) -> None:
        for i in order:  # next() on a shared iterator is atomic under the GIL
            t0 = time.perf_counter()
            got = post(http, *groups[i])
            lat[i] = time.perf_counter() - t0
            assert np.isfinite(got).all() and np.allclose(got, want[i], atol=1e-4), i

    p0, cpu0 = passes(base), cpu_seconds(pid)
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, https))
        wall = time.perf_counter() - start
    finally:
        for http in https:
            http.close()
    pairs = sum(len(d) for _, d in groups)
    return {"pairs_per_s": pairs / wall, "p50_s": statistics.median(lat),
            "p95_s": float(np.percentile(lat, 95)), "passes": passes(base) - p0,
            "requests": len(groups),
            "cpu_ms_per_pair": 1000 * (cpu_seconds(pid) - cpu0) / pairs}  # fmt: skip


def offline(rr, groups: Groups, one_call: bool) -> dict:  # type: ignore[no-untyped-def]
    pairs = sum(len(d) for _, d in groups)
    start, cpu = time.perf_counter(), time.process_time()
    if one_call:
        rows = [r for q, d in groups for r in rr.encoder.pairs(q, d).ids]
        rr.logits_for_ids(rows, batch_size=128)
    else:
        for q, d in groups:
            rr.score(q, d)
    return {"pairs_per_s": pairs / (time.perf_counter() - start), "requests": len(groups),
            "cpu_ms_per_pair": 1000 * (time.process_time() - cpu) / pairs}  # fmt: skip


def in_flight(base: str) -> int:
    """Requests the server holds (this branch: `queue`; main's rerank app: `waiting`)."""
    health = httpx.get(f"{base}/health", timeout=30).json()
    return int(health.get("queue", health.get("waiting", 0)))


def one_during_big(base: str, big: tuple[str, list[str]], small: tuple[str, list[str]],
                   delay: float) -> dict:  # fmt: skip
    """The big request; once the server holds it (tokenised, queued or running) and `delay`
    s more, the one-document request, on its own connection."""
    done: dict[str, float] = {}
    https = {name: httpx.Client(base_url=base, timeout=1200) for name in ("big", "small")}

    def send(name: str, query: str, docs: list[str]) -> None:
        t0 = time.perf_counter()
        post(https[name], query, docs)
        done[name] = time.perf_counter()
        done[name + "_s"] = done[name] - t0

    thread = threading.Thread(target=send, args=("big", *big))
    thread.start()
    while in_flight(base) < 1:
        time.sleep(0.01)
    time.sleep(delay)
    send("small", *small)
    thread.join()
    for http in https.values():
        http.close()
    return {"big_s": done["big_s"], "small_s": done["small_s"],
            "small_first": done["small"] < done["big"],
            "small_over_big": done["small_s"] / done["big_s"]}  # fmt: skip


def scifact_docs(n: int) -> list[str]:
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh, strict=False)]
    return [f"{d['title']} {d['text']}".strip() for d in rows]


def main() -> None:
    from qexport.runtime import Reranker
    from qexport.validate.checks_rerank import beir_groups

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=1, help="of the 0.6B's 28 (default 1)")
    p.add_argument("--artifact", type=Path, default=None, help="default /tmp/rr06-L<layers>")
    p.add_argument("--requests", type=int, default=16, help="SciFact queries, one request each")
    p.add_argument("--docs", type=int, default=8, help="documents per request")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--big-docs", type=int, default=400, help="0: skip the latency part")
    p.add_argument("--delay", type=float, default=0.5,
                   help="s after the server holds the big request before the small is sent")  # fmt: skip
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--baseline", default="/work/wt-srvbase", help="checkout of today's main")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    artifact = build(args.artifact or Path(f"/tmp/rr06-L{args.layers}"), args.layers)
    groups, info = beir_groups(DATA / "scifact", args.requests, args.docs)
    rr = Reranker(artifact, device="cpu")
    want = [rr.score(q, d) for q, d in groups]  # also the warm-up
    checkouts = {f"serve, main ({args.baseline})": args.baseline, "serve, this branch": str(REPO)}
    ports = {name: free_port() for name in checkouts}
    procs = {name: start_server(artifact, checkouts[name], ports[name]) for name in checkouts}
    runs: dict[str, list[dict]] = {}
    lat: dict[str, dict] = {}
    load_avg = [os.getloadavg()[0]]
    try:
        for name, port in ports.items():  # warm-up
            load(f"http://127.0.0.1:{port}", groups[:4], want[:4], 4, procs[name].pid)
        for _ in range(args.repeats):
            runs.setdefault("offline Reranker.score per request", []).append(
                offline(rr, groups, one_call=False))  # fmt: skip
            runs.setdefault("offline, all pairs in one call", []).append(
                offline(rr, groups, one_call=True))  # fmt: skip
            for name, port in ports.items():
                row = load(f"http://127.0.0.1:{port}", groups, want, args.clients, procs[name].pid)
                runs.setdefault(name, []).append(row)
            load_avg.append(os.getloadavg()[0])
        if args.big_docs < 1:
            return report(args, info, best_of(runs), lat, load_avg)
        big = (groups[0][0], scifact_docs(args.big_docs))
        small = (groups[1][0], groups[1][1][:1])
        start = time.perf_counter()
        rr.score(*big)
        lat["offline Reranker.score, the big request alone"] = {
            "big_s": time.perf_counter() - start}  # fmt: skip
        for name, port in ports.items():
            lat[name] = one_during_big(f"http://127.0.0.1:{port}", big, small, args.delay)
            print(name, lat[name], flush=True)
        load_avg.append(os.getloadavg()[0])
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(timeout=60)
    report(args, info, best_of(runs), lat, load_avg)


def best_of(runs: dict[str, list[dict]]) -> dict[str, dict]:
    return {mode: max(rs, key=lambda r: r["pairs_per_s"]) for mode, rs in runs.items()}


def report(args, info, best, lat, load_avg) -> None:  # type: ignore[no-untyped-def]
    per_request = best["offline Reranker.score per request"]["pairs_per_s"]
    one_call = best["offline, all pairs in one call"]["pairs_per_s"]
    print(f"\n{args.requests} requests x {args.docs} SciFact documents ({info['first_stage']}), "
          f"{args.clients} concurrent clients, 0.6B widths, {args.layers} layer(s), fp32, "
          f"best of {args.repeats}; {os.cpu_count()} CPUs, {platform.platform()}, "
          f"python {platform.python_version()}; load average {load_avg}")  # fmt: skip
    print("versions: " + ", ".join(f"{m} {_version(m)}" for m in VERSIONED))
    print("\n| mode | pairs/s | vs offline per request | vs offline one call | p50 s | p95 s "
          "| forward passes | requests | CPU ms per pair |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for mode, r in best.items():
        cells = [f"{r['pairs_per_s']:.2f}", f"{r['pairs_per_s'] / per_request:.2f}x",
                 f"{r['pairs_per_s'] / one_call:.2f}x"]  # fmt: skip
        cells += [f"{r[k]:.2f}" if k in r else "–" for k in ("p50_s", "p95_s")]
        cells += [f"{r['passes']:.0f}" if "passes" in r else "–", str(r["requests"]),
                  f"{r['cpu_ms_per_pair']:.0f}"]  # fmt: skip
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print(f"\na one-document request sent {args.delay:g} s after the server holds another "
          f"client's {args.big_docs}-document request:\n")  # fmt: skip
    print("| mode | big request s | one-document request s | answered first | small / big |")
    print("|---|---:|---:|---|---:|")
    for mode, r in lat.items():
        if "small_s" not in r:
            print(f"| {mode} | {r['big_s']:.2f} | – | – | – |")
            continue
        print(f"| {mode} | {r['big_s']:.2f} | {r['small_s']:.2f} | "
              f"{'yes' if r['small_first'] else 'no'} | {r['small_over_big']:.2f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "info": info, "throughput": best,
                                               "one_during_big": lat,
                                               "load_average": load_avg}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
