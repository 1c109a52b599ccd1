"""Qwen3-Reranker: pairs/s of the qexport artifact vs transformers (the model card's recipe).

Same machine, same pairs: SciFact queries, each with its relevant abstracts plus the abstracts
sharing the most words with it (a lexical first stage), real reranker tokenizer from
../shared/qwen3-reranker/0.6B. The model is `random:qwen3-reranker-0.6b` (the exact 0.6B
widths: hidden 1024, 16/8 heads of 128, FFN 3072, vocab 151,669, tied embeddings; seeded
weights) written as a hub checkpoint with --layers of its 28 layers, then exported from the
folder. Each engine runs alone in its own process over the same token rows (the artifact's
prompt; qexport.validate.speed.measure_rows):

  * onnxruntime, per precision (fp32, int8): `Reranker.logits`, token-budget batches;
  * pytorch: the card's recipe literally (left padding, [batch, seq, vocab] logits, the last
    row, log_softmax over [no, yes]), fp32, sdpa;
  * pytorch-last: the same with `logits_to_keep=1` (only the last position's logits), a
    stronger baseline than the card.

    flock /tmp/qexport-heavy.lock python bench/bench_rerank.py --layers 4 --queries 4 --docs 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DATA, REPO, SHARED

sys.path.insert(0, str(REPO))


def main() -> None:
    from qexport.export.api import ExportOptions, export_onnx
    from qexport.export.random import write_checkpoint
    from qexport.manifest import load_manifest
    from qexport.runtime import Reranker
    from qexport.validate.checks_rerank import beir_groups
    from qexport.validate.speed import CARD_ENGINE, measure_rows

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4, help="of the 0.6B's 28 (default 4)")
    p.add_argument("--queries", type=int, default=4)
    p.add_argument("--docs", type=int, default=8, help="documents per query")
    p.add_argument("--max-length", type=int, default=8192, help="the card's 8192 by default")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--engines", default="pytorch,pytorch-last")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    groups, info = beir_groups(DATA / "scifact", args.queries, args.docs)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rerank.", dir="/tmp") as tmp:
        ckpt = write_checkpoint(
            "qwen3-reranker-0.6b", Path(tmp) / "Qwen3-Reranker-0.6B", layers=args.layers,
            tokenizer=SHARED / "qwen3-reranker" / "0.6B",
        )  # fmt: skip
        kw = {"batch_size": args.batch_size, "repeats": args.repeats}
        token_rows: list[list[int]] = []
        # bench engine name -> the harness's: the card literally; the card with logits_to_keep=1
        engine_names = {"pytorch": CARD_ENGINE, "pytorch-last": "pytorch"}

        def measure(engine: str, artifact: Path) -> dict:
            r = measure_rows(engine_names.get(engine, engine), artifact, ckpt, token_rows, **kw)
            return {"pairs": r["rows"], "seconds_median": round(r["latency_p50_ms"] / 1e3, 4),
                    "pairs_per_s": round(r["rows_per_s"], 3), "peak_rss_mb": r["rss_peak_mb"],
                    "rss_after_load_mb": r["load"]["rss_peak_mb"], "repeats": r["repeats"],
                    "logodds": [float(x) for x in r["outputs"]]}  # fmt: skip

        for precision in args.precisions.split(","):
            out = Path(tmp) / precision
            start = time.perf_counter()
            export_onnx(str(ckpt), out, ExportOptions(progress=False, precision=precision,
                                                      max_length=args.max_length))  # fmt: skip
            took = time.perf_counter() - start
            if not token_rows:  # the same rows for every engine: the artifact's prompt
                encoder = Reranker(out, device="cpu").encoder
                token_rows += [r for q, docs in groups for r in encoder.pairs(q, docs).ids]
            r = measure("onnxruntime", out)
            r["export_s"] = round(took, 1)
            q = load_manifest(out).quantization
            if q:
                r["int8_check"] = q["check"]
            results[f"onnxruntime {precision}"] = r
            print(precision, {k: v for k, v in r.items() if k != "logodds"}, flush=True)
        for engine in args.engines.split(","):
            results[engine] = measure(engine, out)
            print(engine, {k: v for k, v in results[engine].items() if k != "logodds"}, flush=True)
    ref = np.array(results["pytorch"]["logodds"]) if "pytorch" in results else None
    rows = []
    base = results.get("pytorch", {}).get("pairs_per_s")
    for name, r in results.items():
        diff = float(np.abs(np.array(r["logodds"]) - ref).max()) if ref is not None else None
        r["max_abs_logodds_diff_vs_card"] = diff
        speedup = f"{r['pairs_per_s'] / base:.2f}x" if base else "–"
        shown = "–" if diff is None else f"{diff:.2g}"
        rows.append(f"| {name} | {r['pairs_per_s']:.2f} | {speedup} | {r['peak_rss_mb']:.0f} | "
                    f"{r['rss_after_load_mb']:.0f} | {shown} |")  # fmt: skip
    n_pairs = results[next(iter(results))]["pairs"]
    print(f"\n{n_pairs} pairs ({info['queries']} SciFact queries x {info['docs_per_query']} "
          f"documents), 0.6B widths, {args.layers} layers, batch {args.batch_size}, "
          f"max length {args.max_length}, {os.cpu_count()} CPUs (shared)\n")  # fmt: skip
    print("| engine | pairs/s | vs card recipe | peak RSS MB (run) | RSS MB after load | "
          "max abs log-odds diff vs card |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        for r in results.values():
            r.pop("logodds")
        Path(args.json).write_text(json.dumps({"info": info, "args": vars(args),
                                               "results": results}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
