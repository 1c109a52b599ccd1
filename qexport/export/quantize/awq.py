"""Activation-aware scales (AWQ, Lin et al., 2023) before int4 GPTQ.

Per group of projections reading one activation X [.., K] (q/k/v, gate/up, BERT's fused qkv or
intermediate: `smoothquant.group_targets`), per-input-channel factors s = mean|X|^alpha
(normalised so that sqrt(max s * min s) = 1) make the input channels that carry the most
signal larger in the weights, so their rounding error is relatively smaller:
X W = (X / s)(diag(s) W) exactly in float, and the error of the quantized group is
||X W - (X / s) Q(diag(s) W)||^2 = tr(D^T H D), D = W - diag(1/s) Q(diag(s) W), H = X^T X.
alpha is searched per group over ALPHAS (0 = no scaling) on the calibration activations,
the quantizer in the search being round-to-nearest with GPTQ's clipping grid (AWQ's own
choice) or GPTQ itself (`search`); the division by s goes where `smoothquant.apply_smoothing`
puts it: into the preceding norm's gamma (and beta) or the producing projection's output
columns ('fold', exact, no new node), or, mode 'all', also into an explicit `Mul(X, 1/s)`
before the group (what AWQ's own ScaledActivation does after a GELU; exact too, one
element-wise op). GPTQ then quantizes the scaled weights (weight_only.gptq_weights).

Statistics come from the float graph before any fold (a group's fold changes only its own
input, so they stay valid), in chunks whose X^T X fit the Hessian budget.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from .calibration import _real_rows, save_with_outputs
from .check import CheckTexts, initializer_bytes
from .gptq import CLIP_RATIOS, BlockQuantized, gptq, hessian_factor, rtn
from .smoothquant import (
    S_MAX,
    S_MIN,
    Group,
    apply_smoothing,
    chunk_groups,
    fold_site,
    group_targets,
)
from .targets import matmul_targets

log = logging.getLogger("qexport")

ALPHAS = tuple(i / 10 for i in range(11))
MODES = ("off", "fold", "all")  # fold: into a norm / producing projection only; all: also Mul
SITES = {"fold": ("norm", "producer"), "all": ("norm", "producer", "mul")}
SEARCHES = ("rtn", "gptq")
SEARCH = "rtn"

Quantizer = Callable[[np.ndarray, np.ndarray, np.ndarray], BlockQuantized]


def awq_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """s [K] = mean|X|^alpha over the live channels, normalised (sqrt(max * min) = 1) and
    clipped to [S_MIN, S_MAX]; 1 for channels that never carried a value."""
    s = np.ones(mean_abs.shape, dtype=np.float64)
    live = mean_abs > 0
    if alpha == 0 or not live.any():
        return s.astype(np.float32)
    p = np.power(mean_abs[live].astype(np.float64), alpha)
    s[live] = p / np.sqrt(p.max() * p.min())
    return np.clip(s, S_MIN, S_MAX).astype(np.float32)


def group_error(
    weights: Sequence[np.ndarray], h: np.ndarray, s: np.ndarray, quantize: Quantizer
) -> float:
    """||X W - (X / s) Q(diag(s) W)||^2 / ||X W||^2 summed over the group's weights, from
    H = X^T X; `quantize(w_scaled, h_scaled, s)` gives Q(diag(s) W)."""
    h64 = h.astype(np.float64)
    inv = 1.0 / s.astype(np.float64)
    h_scaled = (h64 * inv[:, None] * inv[None, :]).astype(np.float32)
    num = den = 0.0
    for w in weights:
        w64 = w.astype(np.float64)
        q = quantize((w64 * s[:, None]).astype(np.float32), h_scaled, s)
        d = w64 - q.dequantize().astype(np.float64) * inv[:, None]
        num += float(np.sum((h64 @ d) * d))
        den += float(np.sum((h64 @ w64) * w64))
    return num / max(den, 1e-30)


def quantizer(search: str, bits: int, block_size: int, symmetric: bool, damp: float) -> Quantizer:
    """The quantizer the alpha search measures with: round-to-nearest over GPTQ's clipping
    grid, or GPTQ itself from the scaled H."""
    if search not in SEARCHES:
        raise ValueError(f"AWQ search must be one of {', '.join(SEARCHES)}, got {search!r}")

    def quantize(w: np.ndarray, h_scaled: np.ndarray, s: np.ndarray) -> BlockQuantized:
        if search == "rtn":
            return rtn(w, bits, block_size, CLIP_RATIOS, symmetric)
        return gptq(w, hessian_factor(h_scaled, damp), bits, block_size, symmetric)

    return quantize


def search_alpha(
    weights: Sequence[np.ndarray],
    h: np.ndarray,
    mean_abs: np.ndarray,
    quantize: Quantizer,
    alphas: Sequence[float] = ALPHAS,
) -> tuple[float, np.ndarray, list[float]]:
    """The alpha with the least group error (ties: the smaller alpha), its s, and the error
    at every alpha tried."""
    errors = [group_error(weights, h, awq_scales(mean_abs, a), quantize) for a in alphas]
    best = int(np.argmin(errors))
    return alphas[best], awq_scales(mean_abs, alphas[best]), errors


def collect(
    model: ir.Model, scratch: Path, texts: CheckTexts, groups: Sequence[Group], embed: bool
) -> tuple[np.ndarray | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The float graph on the calibration rows: its outputs (if `embed`) and, per group's
    input (by name), H = X^T X and mean|X| per channel over the real tokens."""
    folder = scratch / "awq-float"
    folder.mkdir()
    capture = [g.activation for g in groups]
    path = save_with_outputs(model, folder, initializer_bytes(model), capture)
    runner = texts.runner(path)
    ref = runner.outputs(calibration=True) if embed else None
    names = [v.name or "" for v in capture]
    h: dict[str, np.ndarray] = {}
    total: dict[str, np.ndarray] = {}
    count = dict.fromkeys(names, 0)
    for _idx, feed in runner.batches() if names else []:
        real = feed["attention_mask"].astype(bool)
        for name, arr in zip(names, runner.session.run(names, feed), strict=True):
            x = _real_rows(np.asarray(arr, dtype=np.float32), real)
            h[name] = h[name] + x.T @ x if name in h else x.T @ x
            a = np.abs(x).sum(axis=0, dtype=np.float64)
            total[name] = total[name] + a if name in total else a
            count[name] += len(x)
    del runner
    shutil.rmtree(folder)
    return ref, {n: (h[n], total[n] / max(count[n], 1)) for n in names}


def awq_fold(
    model: ir.Model,
    scratch: Path,
    texts: CheckTexts,
    quantize: Quantizer,
    mode: str,
    budget: int,
    alphas: Sequence[float] = ALPHAS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Search alpha per group whose division can go where `mode` allows, fold the chosen
    scales into `model` (in place), and return the float graph's outputs on the calibration
    rows (before the folds) and the manifest's record."""
    if mode not in SITES:
        raise ValueError(f"AWQ mode must be one of {', '.join(SITES)}, got {mode!r}")
    targets = matmul_targets(model.graph)
    groups = group_targets(targets)
    sites = {id(g): fold_site(g, targets) for g in groups}
    eligible = [g for g in groups if sites[id(g)] in SITES[mode]]
    ref: np.ndarray | None = None
    chosen: list[tuple[Group, float, np.ndarray, list[float]]] = []
    for i, chunk in enumerate(chunk_groups(eligible, budget)):
        got, stats = collect(model, scratch, texts, chunk, embed=i == 0)
        ref = got if i == 0 else ref
        for g in chunk:
            h, mean_abs = stats.pop(g.activation.name or "")
            weights = [t.load().astype(np.float32) for t in g.targets]
            alpha, s, errors = search_alpha(weights, h, mean_abs, quantize, alphas)
            chosen.append((g, alpha, s, errors))
            log.info("awq            %s: alpha %.1f, int4 output error x%.3f vs unscaled",
                     g.targets[0].name, alpha, errors[alphas.index(alpha)] / max(errors[0], 1e-30))  # fmt: skip
            del h, weights
    folded = dict.fromkeys(SITES["all"], 0)
    record: dict[str, Any] = {}
    for g, alpha, s, errors in chosen:
        where = sites[id(g)]
        if alpha != 0:
            where = apply_smoothing(model.graph, g, s, targets)
            folded[where] += 1
        record[g.targets[0].name] = {
            "alpha": alpha,
            "folded_into": where if alpha != 0 else None,
            "error_vs_unscaled": round(errors[alphas.index(alpha)] / max(errors[0], 1e-30), 4),
        }
    assert ref is not None
    return ref, {
        "mode": mode,
        "statistic": "mean |X| per input channel over the calibration tokens",
        "alphas_tried": list(alphas),
        "groups_searched": len(chosen),
        "groups_not_foldable": len(groups) - len(eligible),
        "folded": folded,
        "per_group": record,
    }
