"""int8-dynamic (CPU only): SmoothQuant scale migration from the calibration activations
(smoothquant.py), then DynamicQuantizeMatMul (dynamic.py) with the activations scaled per
token (on every projection unless the family or the option says "ffn": per tensor alone
loses held-out min cosine on MiniLM, docs/benchmarks.md "Fast int8 on real weights"); the
projection groups that still hurt most are left in float until the check texts hold the bar,
else the export is refused.
The attention context (an attention op's output) is never smoothed: its explicit Mul fits the
calibration texts and costs held-out fidelity (docs/benchmarks.md, issue 28)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
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
from .gptq import DAMP, HessianFactor, hessian_factor
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
# per_token "ffn": per token only where the activation is the FFN's nonlinearity (its output
# projection's input: GELU in BERT, the gated SiLU / GELU product in Qwen3 and Gemma3), found
# in the float graph by these producers; per tensor elsewhere (docs/benchmarks.md, issue 28)
ACTIVATION_OPS = frozenset({"Gelu", "BiasGelu", "FastGelu", "Sigmoid", "Relu", "Tanh"})
# the magnitude of the lowest value these produce (GELU's exact min -0.16997, its tanh form's
# -0.17004): their per-token scale is max X with this floor, no Abs (dynamic._per_token_input)
LOWER_BOUNDS = {"Gelu": 0.171, "BiasGelu": 0.171, "FastGelu": 0.171, "Sigmoid": 0.0, "Relu": 0.0}
# producers of the attention context: its projection (attention.output / o_proj) is not
# smoothed (MiniLM held-out min 0.99583 -> 0.99616 with per token on the FFN output only,
# 0.99569 -> 0.99588 per token everywhere; docs/benchmarks.md, issue 28)
ATTENTION_OPS = frozenset({"MultiHeadAttention", "GroupQueryAttention", "Attention"})
# per_token "auto": a group's activations are scaled per token (4 element-wise ops around its
# DynamicQuantizeMatMul) only where that cuts its simulated error below this x per tensor
PER_TOKEN_GAIN = 0.7

Factors = dict[str | None, np.ndarray | None]


def quantize_dynamic(
    model: ir.Model,
    scratch: Path,
    quant: Quantized,
    alphas: tuple[float, ...],
    method: str = "rtn",
    damp: float = DAMP,
    per_token: str = "none",
) -> dict[str, Any]:
    """Rewrite `model` in place (SmoothQuant + DynamicQuantizeMatMul, weights rounded to
    nearest or by GPTQ), measured on the check texts; returns the manifest's record, or
    raises QuantizationRefused."""
    texts = quant.texts
    assert texts is not None
    float_graph = model.graph.clone()  # untouched copy (weights shared, lazily loaded)
    groups = group_targets(matmul_targets(model.graph))
    capture = [g.activation for g in groups]
    texts.reference, stats = float_run(model, scratch, texts, capture, xtx=method == "gptq")
    error, chosen, factors, tokens = _choose_alphas(groups, stats, alphas, per_token)
    rounding = _Rounding(stats, factors, damp) if method == "gptq" else None
    ranked = sorted(error, key=error.__getitem__, reverse=True)
    tried: list[dict[str, Any]] = []
    for fraction in FLOAT_FRACTIONS:
        keep = set(ranked[: round(fraction * len(ranked))])
        if tried and keep == set(tried[-1]["float_groups"]):
            continue
        candidate = model_over(model, float_graph.clone()) if tried else model
        how = _How(factors, rounding, tokens)
        record, cos = _try(candidate, scratch, len(tried), texts, how, keep)
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
                "rounding": "gptq" if rounding else "rtn",
                **({"damp": damp} if rounding else {}),
                "activations": "uint8 quantized at run time: per token on the "
                "per_token_projections (X / max|X| per token; X / max X where X is bounded "
                "below, as GELU's output), else per tensor",
                "per_token": per_token,
                "smoothquant": {
                    "alphas_tried": [None, *alphas],
                    "alpha_per_group": {k: chosen[k] for k in error},
                    "simulated_error_per_group": {k: round(error[k], 5) for k in error},
                    "folded": record["folded"],
                },
                "matmuls_quantized": record["matmuls_quantized"],
                "float_projections": record["float_projections"],
                "per_token_projections": record["per_token_projections"],
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
    groups: list[Group],
    stats: dict[str, ActivationStats],
    alphas: tuple[float, ...],
    per_token: str,
) -> tuple[dict[str, float], dict[str, float | None], Factors, set[str]]:
    """Per group (by activation name): the migration strength (or none) with the smallest
    simulated output error on sampled calibration rows, that error, and the factors; and the
    groups whose activations are scaled per token: all, none, or ("auto") those where it cuts
    the simulated error below PER_TOKEN_GAIN x the best per-tensor error."""
    factors: Factors = {}
    error: dict[str, float] = {}
    chosen: dict[str, float | None] = {}
    tokens: set[str] = set()
    for g in groups:
        name = g.activation.name or ""
        st = stats[name]
        w = group_weight(g)
        modes = _modes(per_token, g.activation)
        producer = g.activation.producer()
        tried = () if producer is not None and producer.op_type in ATTENTION_OPS else alphas
        best: dict[bool, tuple[float, float | None, np.ndarray | None]] = {}
        for pt in modes:
            for alpha in (None, *tried):
                s = None if alpha is None else smoothing_factors(w, st.absmax, alpha)
                err = simulated_error(st.sample, w, st.lo, st.hi, s, pt)  # type: ignore[arg-type]
                if pt not in best or err < best[pt][0]:
                    best[pt] = (err, alpha, s)
        use = modes[-1] and (len(modes) == 1 or best[True][0] < PER_TOKEN_GAIN * best[False][0])
        error[name], chosen[name], factors[name] = best[use]
        if use:
            tokens.add(name)
        del w
    return error, chosen, factors, tokens


def _modes(per_token: str, activation: ir.Value) -> tuple[bool, ...]:
    """The activation scalings a group's search tries: per tensor (False), per token (True)."""
    if per_token == "ffn":
        return (after_activation(activation),)
    return {"none": (False,), "all": (True,), "auto": (False, True)}[per_token]


def after_activation(value: ir.Value, depth: int = 2) -> bool:
    """Whether `value` is an FFN nonlinearity's output: made by one of ACTIVATION_OPS, or by a
    Mul (a gated unit, SiLU = x * sigmoid(x)) of such a value, within `depth` Muls."""
    node = value.producer()
    if node is None:
        return False
    if node.op_type in ACTIVATION_OPS:
        return True
    return (
        depth > 0
        and node.op_type == "Mul"
        and any(v is not None and after_activation(v, depth - 1) for v in node.inputs)
    )


def lower_bound(value: ir.Value, s: np.ndarray | None) -> float | None:
    """The magnitude m with value / s >= -m everywhere when `value` is made by one of
    LOWER_BOUNDS' ops (s: its smoothing factors, or None), else None."""
    node = value.producer()
    if node is None or node.op_type not in LOWER_BOUNDS:
        return None
    return LOWER_BOUNDS[node.op_type] / (1.0 if s is None else float(s.min()))


def _try(
    candidate: ir.Model,
    scratch: Path,
    index: int,
    texts: CheckTexts,
    how: _How,
    keep: set[str],
) -> tuple[dict[str, Any], np.ndarray]:
    """Quantize `candidate` in place leaving the groups in `keep` float, and measure it."""
    record = _dynamic_candidate(candidate, how, keep)
    cos = candidate_cosines(candidate, scratch, f"candidate{index}", texts)
    record.update(summary(cos), float_groups=sorted(keep))
    return record, cos


class _Rounding:
    """GPTQ's H per group (by activation name), of the smoothed activation X / s:
    diag(1/s) X^T X diag(1/s); factored once, when the first weight reading it is written."""

    def __init__(self, stats: dict[str, ActivationStats], factors: Factors, damp: float):
        self.stats, self.factors, self.damp = stats, factors, damp

    def factor(self, name: str) -> Callable[[], HessianFactor]:
        @cache
        def make() -> HessianFactor:
            h = self.stats[name].xtx
            assert h is not None
            s = self.factors.get(name)
            if s is not None:
                inv = (1.0 / s).astype(np.float32)
                h = h * inv[:, None] * inv[None, :]
            return hessian_factor(h, self.damp)

        return make


@dataclass(frozen=True)
class _How:
    factors: Factors  # smoothing per group
    rounding: _Rounding | None  # GPTQ, or round to nearest
    per_token: set[str]  # groups whose activations are scaled per token


def _dynamic_candidate(model: ir.Model, how: _How, keep_float: set[str]) -> dict[str, Any]:
    factors, rounding = how.factors, how.rounding
    targets = matmul_targets(model.graph)
    tokens: dict[str, float | None] = {}
    folded = {"norm": 0, "producer": 0, "mul": 0}  # where the smoothing division went
    quantize: list[Target] = []
    hessians: dict[str, Callable[[], HessianFactor]] = {}
    kept: list[str] = []
    for g in group_targets(targets):
        if g.activation.name in keep_float:
            kept.extend(t.name for t in g.targets)
            continue
        s = factors[g.activation.name]
        if g.activation.name in how.per_token:
            bound = lower_bound(g.activation, s)
            tokens.update((t.name, bound) for t in g.targets)
        if s is not None:
            folded[apply_smoothing(model.graph, g, s, targets)] += 1
        quantize.extend(g.targets)
        if rounding is not None:
            make = rounding.factor(g.activation.name or "")
            hessians.update((t.name, make) for t in g.targets)
    apply_dynamic_int8(model, quantize, hessians, tokens)
    return {"folded": folded, "matmuls_quantized": len(quantize), "float_projections": kept,
            "per_token_projections": sorted(tokens)}  # fmt: skip


def _swap_graph(model: ir.Model, candidate: ir.Model) -> None:
    model.graph = candidate.graph  # type: ignore[misc]
    model.opset_imports.update(candidate.opset_imports)
