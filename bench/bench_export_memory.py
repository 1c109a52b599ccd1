"""Peak host memory and wall time of full-size exports, plus a parity check of the artifact.

    python bench/bench_export_memory.py --model random:qwen3-embedding-4b --precisions fp16 bf16 int8

Each export runs as `/usr/bin/time -v qexport onnx ...` in its own process (peak RSS = the
"Maximum resident set size" of that process). The fp16 artifact is then run with onnxruntime on a
few texts and compared with the same random weights in PyTorch fp32, computed one decoder layer at
a time (qexport.validate.layerwise), so the check fits in memory.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "What is the capital of China?",
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
]


def timed_export(model: str, out: Path, precision: str, extra: list[str]) -> dict[str, float | str]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "qexport.cli", "onnx", model, "-o", str(out),
           "--precision", precision, "--overwrite", *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"precision": precision, "error": proc.stderr.strip().splitlines()[-1]}
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))  # type: ignore[union-attr]
    steps = json.loads((out / "qexport.json").read_text())["timings_s"]
    size = sum(p.stat().st_size for p in out.iterdir())
    return {
        "precision": precision,
        "peak_rss_gb": rss_kb / 2**20,
        "wall_s": wall,
        "size_gb": size / 1e9,
        "steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:qwen3-embedding-4b")
    p.add_argument("--precisions", nargs="*", default=["fp16", "bf16", "int8"])
    p.add_argument("--workdir", default=str(REPO / "bench" / "results" / "export"))
    p.add_argument("--parity", action="store_true", help="check the fp16 artifact against PyTorch")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from qexport.export.source import resolve

    src = resolve(args.model)
    n_params = sum(int(np.prod(src.weights.shape(k))) for k in src.weights.keys())
    bf16_gb = n_params * 2 / 2**30
    print(
        f"{args.model}: {n_params / 1e9:.2f}B parameters, BF16 weights {bf16_gb:.2f} GiB",
        flush=True,
    )
    rows = []
    for precision in args.precisions:
        out = work / f"{precision}"
        row = timed_export(args.model, out, precision, ["--max-length", "8192"])
        row["ratio_to_bf16"] = row.get("peak_rss_gb", float("nan")) / bf16_gb  # type: ignore[operator]
        print(json.dumps(row), flush=True)
        if precision == "fp16" and args.parity and "error" not in row:
            row["parity"] = parity(args.model, out)
            print(json.dumps(row["parity"]), flush=True)
        rows.append(row)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    lines = [
        f"`{args.model}`: {n_params / 1e9:.2f}B parameters, BF16 weights {bf16_gb:.2f} GiB.",
        "",
        "| precision | peak RSS (GiB) | x BF16 weights | wall (s) | artifact (GB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['precision']} | failed: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['precision']} | {r['peak_rss_gb']:.2f} | {r['ratio_to_bf16']:.2f} | {r['wall_s']:.0f} | {r['size_gb']:.2f} |"
            )
    for r in rows:
        if "parity" in r:
            lines.append("")
            lines.append(
                f"fp16 artifact vs PyTorch fp32 (layer-wise) on {len(TEXTS)} texts: {r['parity']}"
            )
    (work / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parity(model: str, artifact: Path) -> dict[str, float]:
    import gc

    from qexport.runtime import Embedder
    from qexport.util import row_cosines
    from qexport.validate.layerwise import LayerwiseReference

    start = time.perf_counter()
    emb = Embedder(artifact, device="cpu")
    ours = emb.embed(TEXTS)
    ort_s = time.perf_counter() - start
    del emb
    gc.collect()
    start = time.perf_counter()
    ref = LayerwiseReference(model, tokenizer=str(artifact)).embed(TEXTS)
    cos = row_cosines(ours, ref)
    return {
        "min_cosine": float(cos.min()),
        "onnxruntime_s": ort_s,
        "pytorch_s": time.perf_counter() - start,
    }


if __name__ == "__main__":
    main()
