"""Weight-only MatMulNBits (int8 / int4): each projection MatMul becomes
`com.microsoft.MatMulNBits` with symmetric blockwise weights.

The packed weights and scales are `ir.LazyTensor`s: they are computed when the model is
written, one weight at a time, by onnxruntime's own kernels (`quantize_matmul_4bits` /
`quantize_matmul_8bits`, called exactly as MatMulNBitsQuantizer's
`DefaultWeightOnlyQuantizer.qbits_block_quant` calls them on a whole ModelProto), so the pass
never holds more than one float weight in memory. tests/export/test_quantize_nbits.py checks
that the result is byte-identical to MatMulNBitsQuantizer's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN
from .targets import Target, drop_initializer, matmul_targets, replace_node

BLOCK_SIZES = (16, 32, 64, 128, 256)


def quantize_blockwise(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blockwise quantization of a float weight [K, N] along K, as
    MatMulNBitsQuantizer does it: packed uint8 [N, K blocks, block_size * bits / 8] and
    scales [N, K blocks] in the weight's dtype (fp32 or fp16)."""
    # the pybind kernels themselves (importing matmul_nbits_quantizer would reconfigure the
    # root logger at INFO level)
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows, cols = w.shape
    k_blocks = (rows + block_size - 1) // block_size
    blob = block_size * bits // 8
    if k_blocks * block_size > rows:
        w = np.pad(w, ((0, k_blocks * block_size - rows), (0, 0)), "constant")
    w = np.ascontiguousarray(w)
    packed = np.zeros((cols, k_blocks, blob), dtype=np.uint8)
    zero_point = np.zeros((cols, (k_blocks + 8 // bits - 1) // (8 // bits)), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=w.dtype)
    kernel = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
    kernel(packed, w, scales, zero_point, block_size, cols, rows, True)
    return packed, scales


class _Blockwise:
    """Quantizes one weight on demand; packed and scales come from one computation, kept
    only until both have been taken."""

    def __init__(self, target: Target, bits: int, block_size: int) -> None:
        self._source = target.weight.const_value
        self._bits = bits
        self._block_size = block_size
        self._parts: dict[int, np.ndarray] = {}

    def part(self, index: int, name: str) -> ir.TensorProtocol:
        if index not in self._parts:
            assert self._source is not None
            w = self._source.numpy()
            packed, scales = quantize_blockwise(w, self._bits, self._block_size)
            self._parts = {0: packed, 1: scales}
        arr = self._parts.pop(index)
        return ir.tensor(arr, name=name)


def apply_matmul_nbits(
    model: ir.Model, *, bits: int, block_size: int, accuracy_level: int | None
) -> dict[str, Any]:
    """Replace every projection MatMul in place; returns what the manifest records."""
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits bits must be 4 or 8, got {bits}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block size must be one of {BLOCK_SIZES}, got {block_size}")
    if accuracy_level is not None and accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy level must be 0..4, got {accuracy_level}")
    graph = model.graph
    targets = matmul_targets(graph)
    quantized_bytes = 0
    for t in targets:
        k, n = t.k, t.n
        k_blocks = (k + block_size - 1) // block_size
        blob = block_size * bits // 8
        q = _Blockwise(t, bits, block_size)
        dtype = t.weight.const_value.dtype  # type: ignore[union-attr]
        packed = ir.LazyTensor(
            lambda q=q, nm=f"{t.name}_Q{bits}": q.part(0, nm),
            dtype=ir.DataType.UINT8,
            shape=ir.Shape([n, k_blocks, blob]),
            name=f"{t.name}_Q{bits}",
        )
        scales = ir.LazyTensor(
            lambda q=q, nm=f"{t.name}_scales": q.part(1, nm),
            dtype=dtype,
            shape=ir.Shape([n, k_blocks]),
            name=f"{t.name}_scales",
        )
        packed_v = ir.Value(name=packed.name, const_value=packed)
        scales_v = ir.Value(name=scales.name, const_value=scales)
        graph.register_initializer(packed_v)
        graph.register_initializer(scales_v)
        attrs: dict[str, Any] = {"K": k, "N": n, "bits": bits, "block_size": block_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        node = ir.Node(
            MS_DOMAIN,
            "MatMulNBits",
            [t.activation, packed_v, scales_v],
            attributes=[ir.convenience.convert_attribute(a, v) for a, v in attrs.items()],
            name=(t.node.name or t.name) + f"_Q{bits}",
        )
        replace_node(graph, t.node, node)
        drop_initializer(graph, t.weight)
        quantized_bytes += n * k_blocks * (blob + int(dtype.itemsize))
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    return {
        "method": "MatMulNBits",
        "bits": bits,
        "block_size": block_size,
        "symmetric": True,
        "accuracy_level": accuracy_level or 0,
        "matmuls_quantized": len(targets),
        "quantized_weight_bytes": quantized_bytes,
    }
