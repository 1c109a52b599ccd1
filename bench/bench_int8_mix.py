"""A mixed int8 plan for all-MiniLM-L6-v2 (issue 28): the projections whose per-tensor int8
activations cost the most (the FFN output projections, docs/benchmarks.md "Where the error
comes from") kept in float or in MatMulNBits int8 (weights per block of 32, activations int8
per block at accuracy level 4), the rest DynamicQuantizeMatMul per tensor with SmoothQuant;
against the exporter's default (per token on the FFN output) and per tensor everywhere.

    flock /tmp/qexport-heavy.lock python bench/bench_int8_mix.py

Fidelity: min / mean cosine against the float graph on the held-out texts of
`validate.heldout` (never calibration). Speed: the graph alone (the runtime's check batches
of `quantize.calibration.Runner`, 32 rows, the CPU token budget) on the first 600 STS-B test
sentences, median of --repeats after a warm-up, each variant's runs interleaved with the
float graph's; ratio to the float graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench_alpha_search import Bench
from common import DATA

VARIANTS = ("per tensor everywhere", "exporter default (per token on the FFN output)",
            "FFN output float, rest per tensor", "FFN output MatMulNBits int8, rest per tensor")  # fmt: skip


def build(b: Bench, variant: str, folder: Path) -> Path:
    from qexport.export.quantize.calibration import save_with_outputs
    from qexport.export.quantize.check import initializer_bytes, model_over
    from qexport.export.quantize.dynamic_search import _dynamic_candidate, _How, after_activation
    from qexport.export.quantize.matmul_nbits import apply_matmul_nbits

    candidate = model_over(b.model, b.float_graph.clone())
    ffn_out = {g.activation.name or "" for g in b.groups if after_activation(g.activation)}
    tokens = b.tokens if variant.startswith("exporter") else set()
    keep = ffn_out if "rest per tensor" in variant else set()
    _dynamic_candidate(candidate, _How(b.factors, None, tokens), keep)
    if "MatMulNBits" in variant:
        apply_matmul_nbits(candidate, bits=8, block_size=32, accuracy_level=4)
    folder.mkdir()
    return save_with_outputs(candidate, folder, initializer_bytes(candidate))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    from qexport.export.quantize.calibration import Rows, save_with_outputs
    from qexport.export.quantize.check import initializer_bytes
    from qexport.runtime.tokenize import TextEncoder
    from qexport.validate.sts import load_sts

    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(Path(tmp), "ffn", (0.5, 0.75, 0.9))
        sts = load_sts(DATA / "stsb" / "test.tsv").sentences[:600]
        rows = Rows.from_texts(TextEncoder(Path(tmp) / "tokenizer", 256, None), sts)
        (Path(tmp) / "float").mkdir()
        fp32 = save_with_outputs(b.model, Path(tmp) / "float", initializer_bytes(b.model))
        from qexport.export.quantize.check import CheckTexts

        speed = CheckTexts(rows, b.held.output, "cpu", "fp32")
        base = speed.runner(fp32)
        base.outputs()
        for i, variant in enumerate(VARIANTS):
            path = build(b, variant, Path(tmp) / f"v{i}")
            held = b.held.cosines(path)
            run = speed.runner(path)
            run.outputs()
            t_base, t_var = [], []
            for _ in range(args.repeats):
                for runner, times in ((base, t_base), (run, t_var)):
                    start = time.perf_counter()
                    runner.outputs()
                    times.append(time.perf_counter() - start)
            ratio = statistics.median(t_base) / statistics.median(t_var)
            print(json.dumps({"variant": variant, "held_min": round(float(held.min()), 5),
                              "held_mean": round(float(held.mean()), 5),
                              "x_fp32_stsb600": round(ratio, 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
