"""int8-dynamic (CPU only): SmoothQuant scale migration from the calibration activations
(smoothquant.py), then DynamicQuantizeMatMul (dynamic.py); the projection groups that still
hurt most are left in float until the check texts hold the bar, else the export is refused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from .calibration import ActivationStats
from .check import (
    CheckTexts,
    QuantizationRefused,
    Quantized,
    candidate_cosines,
    float_run,
    model_over,
    summary,
)
from .dynamic import apply_dynamic_int8
from .smoothquant import (
    Group,
    apply_smoothing,
    group_targets,
    group_weight,
    simulated_error,
    smoothing_factors,
)
from .targets import Target, matmul_targets

log = logging.getLogger("qexport")

# fractions of the smoothed projection groups left in float, tried in order
FLOAT_FRACTIONS = (0.0, 0.1, 0.25, 0.35, 0.5)

Factors = dict[str | None, np.ndarray | None]


def quantize_dynamic(
    model: ir.Model, scratch: Path, quant: Quantized, alphas: tuple[float, ...]
) -> dict[str, Any]:
    """Rewrite `model` in place (SmoothQuant + DynamicQuantizeMatMul), measured on the check
    texts; returns the manifest's record, or raises QuantizationRefused."""
    texts = quant.texts
    assert texts is not None
    float_graph = model.graph.clone()  # untouched copy (weights shared, lazily loaded)
    groups = group_targets(matmul_targets(model.graph))
    texts.reference, stats = float_run(model, scratch, texts, [g.activation for g in groups])
    error, chosen, factors = _choose_alphas(groups, stats, alphas)
    ranked = sorted(error, key=error.__getitem__, reverse=True)
    tried: list[dict[str, Any]] = []
    for fraction in FLOAT_FRACTIONS:
        keep = set(ranked[: round(fraction * len(ranked))])
        if tried and keep == set(tried[-1]["float_groups"]):
            continue
        candidate = model_over(model, float_graph.clone()) if tried else model
        record, cos = _try(candidate, scratch, len(tried), texts, factors, keep)
        tried.append(record)
        log.info(
            "int8-dynamic   %d/%d projection groups float: min cosine %.5f",
            len(keep),
            len(ranked),
            record["min_cosine"],
        )
        if record["min_cosine"] >= quant.bar:
            if candidate is not model:
                _swap_graph(model, candidate)
            quant.info["check"].update(summary(cos))
            quant.checked = True
            return {
                "method": "DynamicQuantizeMatMul",
                "weights": "int8 symmetric, per output channel",
                "activations": "uint8 per tensor, quantized at run time",
                "smoothquant": {
                    "alphas_tried": [None, *alphas],
                    "alpha_per_group": {k: chosen[k] for k in error},
                    "simulated_error_per_group": {k: round(error[k], 5) for k in error},
                    "folded": record["folded"],
                },
                "matmuls_quantized": record["matmuls_quantized"],
                "float_projections": record["float_projections"],
                "attempts": [
                    {"float_groups": len(t["float_groups"]), "min_cosine": t["min_cosine"]}
                    for t in tried
                ],
            }
    best = max(t["min_cosine"] for t in tried)
    raise QuantizationRefused(
        f"int8-dynamic refused: calibration measured min cosine {tried[0]['min_cosine']:.4f} "
        f"vs the float graph with every projection quantized and {best:.4f} at best with "
        f"{int(FLOAT_FRACTIONS[-1] * 100)}% of them left in float (bar {quant.bar}); "
        "use --precision int8 (weight-only, int8 activations per block on CPU)"
    )


def _choose_alphas(
    groups: list[Group], stats: dict[str, ActivationStats], alphas: tuple[float, ...]
) -> tuple[dict[str, float], dict[str, float | None], Factors]:
    """Per group (by activation name): the migration strength (or none) with the smallest
    simulated output error on sampled calibration rows, that error, and the factors."""
    factors: Factors = {}
    error: dict[str, float] = {}
    chosen: dict[str, float | None] = {}
    for g in groups:
        name = g.activation.name or ""
        st = stats[name]
        w = group_weight(g)
        x = st.sample
        best: tuple[float, float | None, np.ndarray | None] | None = None
        for alpha in (None, *alphas):
            s = None if alpha is None else smoothing_factors(w, st.absmax, alpha)
            err = simulated_error(x, w, st.lo, st.hi, s)  # type: ignore[arg-type]
            if best is None or err < best[0]:
                best = (err, alpha, s)
        assert best is not None
        error[name], chosen[name], factors[name] = best
        del w
    return error, chosen, factors


def _try(
    candidate: ir.Model,
    scratch: Path,
    index: int,
    texts: CheckTexts,
    factors: Factors,
    keep: set[str],
) -> tuple[dict[str, Any], np.ndarray]:
    """Quantize `candidate` in place leaving the groups in `keep` float, and measure it."""
    record = _dynamic_candidate(candidate, factors, keep)
    cos = candidate_cosines(candidate, scratch, f"candidate{index}", texts)
    record.update(summary(cos), float_groups=sorted(keep))
    return record, cos


def _dynamic_candidate(model: ir.Model, factors: Factors, keep_float: set[str]) -> dict[str, Any]:
    targets = matmul_targets(model.graph)
    folded = {"norm": 0, "producer": 0, "mul": 0}  # where the smoothing division went
    quantize: list[Target] = []
    kept: list[str] = []
    for g in group_targets(targets):
        if g.activation.name in keep_float:
            kept.extend(t.name for t in g.targets)
            continue
        s = factors[g.activation.name]
        if s is not None:
            folded[apply_smoothing(model.graph, g, s, targets)] += 1
        quantize.extend(g.targets)
    apply_dynamic_int8(model, quantize)
    return {"folded": folded, "matmuls_quantized": len(quantize), "float_projections": kept}


def _swap_graph(model: ir.Model, candidate: ir.Model) -> None:
    model.graph = candidate.graph  # type: ignore[misc]
    model.opset_imports.update(candidate.opset_imports)
