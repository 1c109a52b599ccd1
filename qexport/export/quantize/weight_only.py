"""int8 / int4 weight-only: every projection becomes MatMulNBits (matmul_nbits.py), its weights
rounded to nearest or by GPTQ from the float graph's activations (gptq.py), optionally after
activation-aware scales (awq.py, `Plan.awq`); int4 sends the projections with the largest GPTQ
output error to int8 until the check texts hold the bar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from . import awq
from .awq import quantizer
from .check import CheckTexts, Quantized, candidate_cosines, float_run, model_over, summary
from .gptq import CLIP_RATIOS, DAMP, BlockQuantized, gptq, hessian_factor, output_error
from .matmul_nbits import apply_matmul_nbits
from .options import Plan
from .smoothquant import chunk_groups, group_targets
from .targets import matmul_targets

log = logging.getLogger("qexport")

HESSIAN_BUDGET = 1 << 30  # bytes of X^T X (float32) gathered per calibration run
# int4 mixed precision: the projections with the largest GPTQ output error go to int8, a few
# at a time, until the check texts hold the bar plus a margin (the check texts are also the
# calibration texts, so they flatter GPTQ); at most this fraction of the projection weights
WIDER_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
WIDER_MARGIN = 0.005
MAX_WIDER_FRACTION = 0.25


def quantize_weight_only(
    model: ir.Model, scratch: Path, quant: Quantized, plan: Plan, nbits: dict[str, int]
) -> dict[str, Any]:
    """Rewrite `model` in place with MatMulNBits (`nbits`: bits, block size, accuracy level);
    returns the manifest's record of it. Sets the float reference when the float graph runs."""
    texts = quant.texts
    done = None
    wider: dict[str, int] = {}
    scaled: dict[str, Any] | None = None
    if plan.method == "gptq":
        assert texts is not None
        bits, block = nbits["bits"], nbits["block_size"]
        if plan.awq != "off":  # activation-aware scales folded first (awq.py)
            search = quantizer(awq.SEARCH, bits, block, plan.symmetric, plan.damp)
            ref, scaled = awq.awq_fold(model, scratch, texts, search, plan.awq, HESSIAN_BUDGET)
        float_graph = model.graph.clone()  # weights shared, lazily loaded
        texts.reference, done, error = gptq_weights(
            model, scratch, texts, bits, block, plan.symmetric, plan.damp
        )
        if scaled is not None:  # the reference is the float graph before the folds
            texts.reference = ref
            scaled["search"] = awq.SEARCH
        if nbits["bits"] == 4 and plan.check:
            wider = _widen(model, float_graph, scratch, quant, nbits, done, error)
    elif texts is not None:
        texts.reference = float_run(model, scratch, texts, [])[0]
    info = apply_matmul_nbits(model, **nbits, done=done, wider=wider)  # type: ignore[arg-type]
    if plan.method == "gptq":
        assert texts is not None
        info["gptq"] = {
            "calibration_texts": len(texts.rows),
            "damp": plan.damp,
            "clip_ratios": list(CLIP_RATIOS),
        }
        if scaled is not None:
            info["awq"] = scaled
    return info


def gptq_weights(
    model: ir.Model,
    scratch: Path,
    texts: CheckTexts,
    bits: int,
    block_size: int,
    symmetric: bool = True,
    damp: float = DAMP,
) -> tuple[np.ndarray, dict[str, BlockQuantized], dict[str, float]]:
    """GPTQ every projection from X^T X of its input on the calibration texts. The float
    graph runs once per chunk of projection groups whose Hessians fit HESSIAN_BUDGET; each
    chunk is quantized (packed int4/int8 kept, Hessians dropped) before the next run. Returns
    the float graph's vectors, the quantized weights, and each projection's relative output
    error on the calibration activations."""
    chunks = chunk_groups(group_targets(matmul_targets(model.graph)), HESSIAN_BUDGET)
    done: dict[str, BlockQuantized] = {}
    error: dict[str, float] = {}
    ref: np.ndarray | None = None
    for i, chunk in enumerate(chunks):
        hessians: dict[str, np.ndarray] = {}
        capture = [g.activation for g in chunk]
        got, _ = float_run(model, scratch, texts, capture, hessians, embed=i == 0)
        ref = got if i == 0 else ref
        for g in chunk:
            h = hessians.pop(g.activation.name or "")
            factor = hessian_factor(h, damp)  # once for the projections sharing this input
            for t in g.targets:
                w = t.load()
                done[t.name] = gptq(w, factor, bits, block_size, symmetric)
                error[t.name] = output_error(w, done[t.name], h)
            del h
    assert ref is not None
    return ref, done, error


def _widen(
    model: ir.Model,
    float_graph: ir.Graph,
    scratch: Path,
    quant: Quantized,
    nbits: dict[str, int],
    done: dict[str, BlockQuantized],
    error: dict[str, float],
) -> dict[str, int]:
    """int4 mixed precision: which projections go to int8 (WIDER_STEPS, worst GPTQ output
    error first). Each candidate is written and run on the check texts; the first holding the
    bar + WIDER_MARGIN wins, else the widest allowed one (which the check then refuses when it
    is below the bar)."""
    assert quant.texts is not None
    ranked = sorted(error, key=error.__getitem__, reverse=True)
    sizes = {t.name: t.k * t.n for t in matmul_targets(float_graph)}
    total = sum(sizes.values())
    attempts: list[dict[str, Any]] = []
    chosen: dict[str, int] = {}
    for m in WIDER_STEPS:
        wider = {name: 8 for name in ranked[:m]}
        if m > len(ranked) or sum(sizes[n] for n in wider) > MAX_WIDER_FRACTION * total:
            break
        candidate = model_over(model, float_graph.clone())
        apply_matmul_nbits(candidate, **nbits, done=done, wider=wider)  # type: ignore[arg-type]
        cos = candidate_cosines(candidate, scratch, f"int4-{m}", quant.texts)
        attempts.append({"int8_projections": m, **summary(cos)})
        log.info(
            "int4 + gptq    %d/%d projections int8: min cosine %.5f", m, len(ranked), cos.min()
        )
        chosen = wider
        quant.info["check"].update(summary(cos))
        if cos.min() >= quant.bar + WIDER_MARGIN:
            break
    quant.checked = bool(attempts)
    quant.info["mixed_precision"] = {
        "rule": f"worst GPTQ output error first, until min cosine >= bar + {WIDER_MARGIN} "
        f"on the check texts, at most {MAX_WIDER_FRACTION:.0%} of projection weights",
        "output_error": {k: round(v, 6) for k, v in sorted(error.items())},
        "attempts": attempts,
    }
    return chosen
