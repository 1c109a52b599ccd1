"""GPTQ (Frantar et al., 2023) for MatMulNBits' blockwise format (symmetric or with zero points).

Round-to-nearest quantizes each weight on its own. GPTQ quantizes the input channels of a
weight W [K, N] one at a time and spreads each channel's rounding error over the channels not
yet quantized, weighted by the inverse of H = X^T X (X: the calibration activations feeding
the MatMul), so that the *output* X W moves as little as possible. Blocks run along K, as in
MatMulNBits: each block of `block_size` input channels has one scale per output column,
chosen when GPTQ reaches the block (from the error-updated weights) by a small search over
clipping ratios of the block's |max| (the `mse` grid of the reference implementation).

Symmetric codes use onnxruntime's convention (zero point 2^(bits-1), implicit), so `pack`
gives exactly the bytes MatMulNBits reads; tests/export/test_quantize_gptq.py checks
`rtn(...).packed()` against onnxruntime's own quantizer byte for byte, and that onnxruntime's
kernel fed our codes, scales and zero points computes X @ dequantize().
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# mean(diag H) x DAMP is added to H's diagonal. The paper uses 0.01 with ~250k calibration
# tokens; with the ~1k tokens of the built-in texts that overfits (int4 min cosine on held-out
# STS-B sentences, bench/bench_gptq.py: MiniLM 0.953 at 0.01, 0.965 at 0.1, 0.973 at 1.0;
# Qwen3 0.6B shape 0.980 at 0.1, 0.985 at 1.0; docs/benchmarks.md), so the default is 1.0.
DAMP = 1.0
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
LAZY_BLOCK = 128  # columns whose updates are applied together (speed only)


def _grid(
    w: np.ndarray, bits: int, ratio: float, dtype: np.dtype, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per output row of w [N, B], the range shrunk by `ratio`; the
    scale rounded to the artifact's scale dtype. Symmetric: onnxruntime's convention, scale =
    signed |max| / -2^(bits-1), zero point 2^(bits-1). Asymmetric: [min, max] (widened to
    include 0, as onnxruntime does) over 2^bits - 1 steps."""
    top = 2**bits - 1
    if symmetric:
        idx = np.abs(w).argmax(axis=1)
        vmax = w[np.arange(w.shape[0]), idx] * ratio
        scale = (vmax / -(2 ** (bits - 1))).astype(dtype).astype(np.float32)
        zp = np.full(w.shape[0], 2 ** (bits - 1), dtype=np.float32)
    else:
        lo = np.minimum(w.min(axis=1), 0) * ratio
        hi = np.maximum(w.max(axis=1), 0) * ratio
        scale = ((hi - lo) / top).astype(dtype).astype(np.float32)
        safe = np.where(scale == 0, np.float32(1.0), scale)
        zp = np.clip(np.rint(-lo / safe), 0, top).astype(np.float32)
    return np.where(scale == 0, np.float32(1.0), scale), zp


def _quantize(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.rint(w / scale[:, None]) + zp[:, None], 0, 2**bits - 1)


def _dequantize(q: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    return (q - zp[:, None]) * scale[:, None]


def choose_grid(
    w: np.ndarray,
    bits: int,
    dtype: np.dtype,
    symmetric: bool = True,
    ratios: tuple[float, ...] = CLIP_RATIOS,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point for w [N, B] (one block): per row, the clipping ratio with the
    least squared error (ratio 1.0 alone is plain round-to-nearest)."""
    best_err = np.full(w.shape[0], np.inf, dtype=np.float32)
    best_s = np.zeros(w.shape[0], dtype=np.float32)
    best_z = np.zeros(w.shape[0], dtype=np.float32)
    for ratio in ratios:
        s, z = _grid(w, bits, ratio, dtype, symmetric)
        err = np.square(_dequantize(_quantize(w, s, z, bits), s, z) - w).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        best_z = np.where(better, z, best_z)
    return best_s, best_z


@dataclass
class BlockQuantized:
    """A weight [K, N] in MatMulNBits' blockwise form, before packing."""

    codes: np.ndarray  # [K, N] uint8
    scales: np.ndarray  # [N, K blocks], the weight's float dtype
    zero_points: np.ndarray | None  # [N, K blocks] uint8; None: symmetric
    bits: int
    block_size: int

    def dequantize(self) -> np.ndarray:
        """Back to float32 [K, N]."""
        k = self.codes.shape[0]
        per_row = np.repeat(self.scales.astype(np.float32).T, self.block_size, axis=0)[:k]
        if self.zero_points is None:
            zp: np.ndarray | float = 2 ** (self.bits - 1)
        else:
            zp = np.repeat(self.zero_points.astype(np.float32).T, self.block_size, axis=0)[:k]
        return (self.codes.astype(np.float32) - zp) * per_row

    def packed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """MatMulNBits' B, scales and (asymmetric) zero_points inputs."""
        zp = None if self.zero_points is None else pack_zero_points(self.zero_points, self.bits)
        return pack(self.codes, self.bits, self.block_size), self.scales, zp


def rtn(
    w: np.ndarray,
    bits: int,
    block_size: int,
    ratios: tuple[float, ...] = (1.0,),
    symmetric: bool = True,
) -> BlockQuantized:
    """Round-to-nearest of w [K, N] (ratios (1.0,): exactly onnxruntime's quantizer)."""
    k, n = w.shape
    wt = w.T.astype(np.float32)
    q = np.zeros((n, k), dtype=np.uint8)
    k_blocks = (k + block_size - 1) // block_size
    scales = np.zeros((n, k_blocks), dtype=w.dtype)
    zps = np.zeros((n, k_blocks), dtype=np.uint8)
    for b, start in enumerate(range(0, k, block_size)):
        blk = wt[:, start : start + block_size]
        s, z = choose_grid(blk, bits, w.dtype, symmetric, ratios)
        q[:, start : start + block_size] = _quantize(blk, s, z, bits)
        scales[:, b], zps[:, b] = s, z
    return BlockQuantized(q.T, scales, None if symmetric else zps, bits, block_size)


@dataclass
class HessianFactor:
    """What GPTQ needs from H = X^T X, computed once per input activation (the q/k/v and the
    gate/up projections of a layer read the same input, so they share it)."""

    u: np.ndarray  # [K, K] float32, upper triangular: (H + damping)^-1 = U^T U
    dead: np.ndarray  # [K] bool: input channels that never carried a value


def _inverse_lower(lower: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by halves (inv([[A, 0], [C, D]]) = [[A^-1, 0],
    [-D^-1 C A^-1, D^-1]]): matrix products only, about a sixth of a general inverse's work."""
    k = lower.shape[0]
    if k <= 256:
        return np.tril(np.linalg.inv(lower))
    m = k // 2
    a_inv = _inverse_lower(lower[:m, :m])
    d_inv = _inverse_lower(lower[m:, m:])
    out = np.zeros_like(lower)
    out[:m, :m] = a_inv
    out[m:, m:] = d_inv
    out[m:, :m] = -(d_inv @ lower[m:, :m]) @ a_inv
    return out


def prepare(
    w: np.ndarray, h: np.ndarray | HessianFactor, damp: float
) -> tuple[np.ndarray, np.ndarray]:
    """What every GPTQ variant starts from: (U of H^-1 = U^T U [K, K], w^T as float32 [N, K]
    with the dead input channels zeroed: rows are output columns, as in the paper). `h` is
    H = X^T X or its hessian_factor (which then carries the damping)."""
    k = w.shape[0]
    factor = h if isinstance(h, HessianFactor) else hessian_factor(h, damp)
    if factor.u.shape != (k, k):
        raise ValueError(f"H must be [{k}, {k}], got {list(factor.u.shape)}")
    wt = w.T.astype(np.float32)
    wt[:, factor.dead] = 0.0
    return factor.u, wt


def hessian_factor(h: np.ndarray, damp: float = DAMP) -> HessianFactor:
    """Dead channels get H = 1 (their weights are zeroed), mean(diag H) x damp is added to the
    diagonal, then U, upper, with (H)^-1 = U^T U. With R reversing the channel order and
    R H R = L L^T (Cholesky), U = R L^-1 R: one Cholesky and one triangular inverse, no
    general inverse (K = 9728: 15 s instead of 52 s on 2 cores). float32 is enough: with the
    damping H is well conditioned (tests/export/test_quantize_gptq.py compares with float64)."""
    k = h.shape[0]
    if h.shape != (k, k):
        raise ValueError(f"H must be square, got {list(h.shape)}")
    h = h.astype(np.float32).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h), dtype=np.float64))
    lower = np.linalg.cholesky(h[::-1, ::-1])
    u = _inverse_lower(lower)[::-1, ::-1]
    return HessianFactor(np.ascontiguousarray(u), dead)


def gptq(
    w: np.ndarray,
    h: np.ndarray | HessianFactor,
    bits: int,
    block_size: int,
    symmetric: bool = True,
    damp: float = DAMP,
) -> BlockQuantized:
    """GPTQ of w [K, N] (float) with H = X^T X [K, K] from calibration activations (or its
    hessian_factor, which then carries the damping)."""
    k, n = w.shape
    u, wt = prepare(w, h, damp)
    q = np.zeros((n, k), dtype=np.uint8)
    k_blocks = (k + block_size - 1) // block_size
    scales = np.zeros((n, k_blocks), dtype=w.dtype)
    zps = np.zeros((n, k_blocks), dtype=np.uint8)
    lazy = max(LAZY_BLOCK, block_size)  # a multiple of block_size (both powers of two)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = wt[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        for b1 in range(0, i2 - i1, block_size):
            b2 = min(b1 + block_size, i2 - i1)
            scale, zp = choose_grid(w1[:, b1:b2], bits, w.dtype, symmetric)
            scales[:, (i1 + b1) // block_size], zps[:, (i1 + b1) // block_size] = scale, zp
            for j in range(b1, b2):
                col = i1 + j
                wc = w1[:, j]
                qc = _quantize(wc[:, None], scale, zp, bits)[:, 0]
                q[:, col] = qc
                err = (wc - _dequantize(qc[:, None], scale, zp)[:, 0]) / u[col, col]
                # the rest of this quantization block at once (its next column is next)...
                w1[:, j:b2] -= err[:, None] * u[col, col : i1 + b2]
                err1[:, j] = err
            # ...the rest of the lazy block once per quantization block, the rest of the
            # weight once per lazy block: the same sums of rank-1 updates, fewer passes
            w1[:, b2:] -= err1[:, b1:b2] @ u[i1 + b1 : i1 + b2, i1 + b2 : i2]
        wt[:, i2:] -= err1 @ u[i1:i2, i2:]
    return BlockQuantized(q.T, scales, None if symmetric else zps, bits, block_size)


def pack(codes: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """Codes [K, N] -> MatMulNBits' B [N, K blocks, block_size * bits / 8]: per output
    column, K padded to whole blocks with zero bytes (as onnxruntime's quantizer leaves them;
    the kernel reads only K), two 4-bit codes per byte (the lower K index in the low nibble)."""
    k, n = codes.shape
    k_blocks = (k + block_size - 1) // block_size
    full = np.zeros((n, k_blocks * block_size), dtype=np.uint8)
    full[:, :k] = codes.T
    if bits == 4:
        full = full[:, 0::2] | (full[:, 1::2] << 4)
    return full.reshape(n, k_blocks, block_size * bits // 8)


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """[N, K blocks] -> MatMulNBits' zero_points [N, ceil(K blocks * bits / 8)] (4-bit: two
    blocks per byte, the lower block in the low nibble)."""
    if bits == 8:
        return zero_points.astype(np.uint8)
    n, blocks = zero_points.shape
    z = np.zeros((n, blocks + blocks % 2), dtype=np.uint8)
    z[:, :blocks] = zero_points
    return z[:, 0::2] | (z[:, 1::2] << 4)


def output_error(w: np.ndarray, q: BlockQuantized, h: np.ndarray) -> float:
    """||X (W - Q(W))||^2 / ||X W||^2 over the calibration activations, from H = X^T X."""
    w32 = w.astype(np.float32)
    d = w32 - q.dequantize()
    h32 = h.astype(np.float32)
    den = float(np.sum((h32 @ w32) * w32, dtype=np.float64))
    return float(np.sum((h32 @ d) * d, dtype=np.float64)) / max(den, 1e-30)
