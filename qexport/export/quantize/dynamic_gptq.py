"""GPTQ's error-compensating rounding for DynamicQuantizeMatMul's weights: int8 symmetric, one
scale per output column over the whole input dimension (the layout `dynamic.py` writes).

The scale of each column is fixed first (the clipping ratio of its |max| with the least
squared rounding error, `CLIP_RATIOS`); then the input channels are rounded one at a time
and each channel's rounding error is spread over the channels not yet rounded, weighted by
the inverse of H = X^T X of the calibration activations (gptq.py, Frantar et al., 2023), so
that X W moves as little as possible instead of each weight on its own.
"""

from __future__ import annotations

import numpy as np

from .gptq import DAMP, HessianFactor, prepare

QMAX = 127  # symmetric int8: codes in [-127, 127], as dynamic.quantize_per_channel
CLIP_RATIOS = (1.0, 0.98, 0.95, 0.92, 0.9, 0.85)
LAZY = 128


def column_scales(w: np.ndarray, ratios: tuple[float, ...] = CLIP_RATIOS) -> np.ndarray:
    """Per output column of w [K, N]: |max| x ratio / 127, the ratio with the least squared
    error of round-to-nearest (ratios (1.0,): exactly quantize_per_channel's scale)."""
    absmax = np.abs(w).max(axis=0).astype(np.float32)
    best = np.full(w.shape[1], np.inf)
    out = np.zeros(w.shape[1], dtype=np.float32)
    for ratio in ratios:
        s = absmax * np.float32(ratio) / np.float32(QMAX)
        s = np.where(s == 0, np.float32(1.0), s)
        err = np.square(np.clip(np.rint(w / s), -QMAX, QMAX) * s - w).sum(axis=0)
        better = err < best
        best, out = np.where(better, err, best), np.where(better, s, out)
    return out.astype(np.float32)


def gptq_per_channel(
    w: np.ndarray, h: np.ndarray | HessianFactor, damp: float = DAMP
) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes [K, N], scales fp32 [N]) of w [K, N] by GPTQ with H = X^T X [K, K] (or its
    hessian_factor, which then carries the damping)."""
    k, n = w.shape
    u, wt = prepare(w, h, damp)
    scale = column_scales(wt.T)
    q = np.zeros((n, k), dtype=np.int8)
    for i1 in range(0, k, LAZY):
        i2 = min(i1 + LAZY, k)
        w1 = wt[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        for j in range(i2 - i1):
            col = i1 + j
            qc = np.clip(np.rint(w1[:, j] / scale), -QMAX, QMAX)
            q[:, col] = qc.astype(np.int8)
            err = (w1[:, j] - qc * scale) / u[col, col]
            w1[:, j:] -= err[:, None] * u[col, col:i2]
            err1[:, j] = err
        wt[:, i2:] -= err1 @ u[i1:i2, i2:]
    return np.ascontiguousarray(q.T), scale
