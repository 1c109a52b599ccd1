"""Offline `Reranker` throughput per token budget: the same requests as bench_rerank_server.py
(SciFact queries with 8 documents each), one `score` call per request and all pairs in one
`logits_for_ids` call, for each `max_batch_tokens`. Shows which budget the CPU runs fastest.

    flock /tmp/qexport-heavy.lock python bench/bench_rerank_budget.py --budgets 16384,4096,2048

The artifact is bench_rerank_server.py's (`--artifact`, default /tmp/rr06-L1: build it with
that bench first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common import DATA, REPO

sys.path.insert(0, str(REPO))


def main() -> None:
    from qexport.runtime import Reranker
    from qexport.validate.checks_rerank import beir_groups

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", type=Path, default=Path("/tmp/rr06-L1"))
    p.add_argument("--budgets", default="16384,4096,2048")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    groups, _ = beir_groups(DATA / "scifact", args.requests, args.docs)
    print("| padded tokens per pass | score per request pairs/s | all pairs in one call pairs/s |")
    print("|---:|---:|---:|")
    for budget in (int(b) for b in args.budgets.split(",")):
        rr = Reranker(args.artifact, device="cpu", max_batch_tokens=budget)
        rows = [r for q, d in groups for r in rr.encoder.pairs(q, d).ids]
        rr.logits_for_ids(rows[:16])  # warm-up
        per_request, one_call = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for q, d in groups:
                rr.score(q, d)
            per_request.append(len(rows) / (time.perf_counter() - start))
            start = time.perf_counter()
            rr.logits_for_ids(rows, batch_size=len(rows))
            one_call.append(len(rows) / (time.perf_counter() - start))
        cells = [" / ".join(f"{x:.2f}" for x in xs) for xs in (per_request, one_call)]
        print(f"| {budget:,} | {cells[0]} | {cells[1]} |", flush=True)
    print(f"\n{len(rows)} pairs, {sum(map(len, rows)) / len(rows):.0f} tokens per pair; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
