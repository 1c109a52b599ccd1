"""Weight-only MatMulNBits (int8 / int4): each projection MatMul becomes
`com.microsoft.MatMulNBits` with blockwise weights (blocks along K, one scale per block and
output column).

The packed weights, scales and (when given) zero points are `ir.LazyTensor`s, computed when
the model is written, one weight at a time, so the pass never holds more than one float weight
in memory. A weight comes either from an earlier pass (`done`: GPTQ's codes and scales, with
zero points when asymmetric, gptq.py) or is rounded to nearest here, symmetric, by
onnxruntime's own kernels (`quantize_matmul_4bits` / `quantize_matmul_8bits`, called exactly
as MatMulNBitsQuantizer's `DefaultWeightOnlyQuantizer.qbits_block_quant` calls them on a whole
ModelProto). `wider` gives chosen projections more bits (int4 mixed precision).

Tests: tests/export/test_quantize.py::test_nbits_pass_equals_matmulnbitsquantizer (the
round-to-nearest pass writes the bytes MatMulNBitsQuantizer writes, and runs alike);
tests/export/test_quantize_gptq.py (GPTQ's packed codes, scales and zero points, symmetric or
not, run in onnxruntime's MatMulNBits kernel as X @ dequantize()); test_fidelity_vs_pytorch in
test_quantize.py (int4 with GPTQ and int8 projections, end to end, against PyTorch).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN
from .gptq import BlockQuantized
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
    only until all have been taken. `done` comes from an earlier pass (GPTQ: packed codes,
    scales and maybe zero points); otherwise onnxruntime's round-to-nearest kernel runs here."""

    def __init__(
        self,
        target: Target,
        bits: int,
        block_size: int,
        done: BlockQuantized | None = None,
    ) -> None:
        self._source = target.weight.const_value
        self._bits = bits
        self._block_size = block_size
        self._done = done
        self._parts: dict[int, np.ndarray] = {}

    def part(self, index: int, name: str) -> ir.TensorProtocol:
        if index not in self._parts:
            if self._done is not None:
                packed, scales, zero_points = self._done.packed()
                self._done = None
                self._parts = {0: packed, 1: scales}
                if zero_points is not None:
                    self._parts[2] = zero_points
            else:
                assert self._source is not None
                packed, scales = quantize_blockwise(
                    self._source.numpy(), self._bits, self._block_size
                )
                self._parts = {0: packed, 1: scales}
        arr = self._parts.pop(index)
        return ir.tensor(arr, name=name)


def apply_matmul_nbits(
    model: ir.Model,
    *,
    bits: int,
    block_size: int,
    accuracy_level: int | None,
    done: Mapping[str, BlockQuantized] | None = None,
    wider: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Replace every projection MatMul in place; returns what the manifest records.
    `done` (weight name -> BlockQuantized) holds weights already quantized (GPTQ); the
    others are quantized by round-to-nearest when written. `wider` (weight name -> bits)
    gives some projections more bits than `bits` (mixed precision)."""
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits bits must be 4 or 8, got {bits}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block size must be one of {BLOCK_SIZES}, got {block_size}")
    if accuracy_level is not None and accuracy_level not in (0, 1, 2, 3, 4):
        raise ValueError(f"accuracy level must be 0..4, got {accuracy_level}")
    graph = model.graph
    targets = matmul_targets(graph)
    quantized_bytes = 0
    wider = wider or {}
    symmetric = True
    for t in targets:
        k, n = t.k, t.n
        b = wider.get(t.name, bits)
        k_blocks = (k + block_size - 1) // block_size
        blob = block_size * b // 8
        pre = done.get(t.name) if done and b == bits else None
        q = _Blockwise(t, b, block_size, pre)
        dtype = t.weight.const_value.dtype  # type: ignore[union-attr]
        packed = ir.LazyTensor(
            partial(q.part, 0, f"{t.name}_Q{b}"),
            dtype=ir.DataType.UINT8,
            shape=ir.Shape([n, k_blocks, blob]),
            name=f"{t.name}_Q{b}",
        )
        scales = ir.LazyTensor(
            partial(q.part, 1, f"{t.name}_scales"),
            dtype=dtype,
            shape=ir.Shape([n, k_blocks]),
            name=f"{t.name}_scales",
        )
        packed_v = ir.Value(name=packed.name, const_value=packed)
        scales_v = ir.Value(name=scales.name, const_value=scales)
        graph.register_initializer(packed_v)
        graph.register_initializer(scales_v)
        inputs = [t.activation, packed_v, scales_v]
        if pre is not None and pre.zero_points is not None:
            zp = ir.LazyTensor(
                partial(q.part, 2, f"{t.name}_zero_points"),
                dtype=ir.DataType.UINT8,
                shape=ir.Shape([n, (k_blocks * b + 7) // 8]),
                name=f"{t.name}_zero_points",
            )
            zp_v = ir.Value(name=zp.name, const_value=zp)
            graph.register_initializer(zp_v)
            inputs.append(zp_v)
            quantized_bytes += n * ((k_blocks * b + 7) // 8)
            symmetric = False
        attrs: dict[str, Any] = {"K": k, "N": n, "bits": b, "block_size": block_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        node = ir.Node(
            MS_DOMAIN,
            "MatMulNBits",
            inputs,
            attributes=[ir.convenience.convert_attribute(a, v) for a, v in attrs.items()],
            name=(t.node.name or t.name) + f"_Q{b}",
        )
        replace_node(graph, t.node, node)
        drop_initializer(graph, t.weight)
        quantized_bytes += n * k_blocks * (blob + int(dtype.itemsize))
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    return {
        "method": "MatMulNBits",
        "weights": "gptq" if done is not None else "round-to-nearest",
        "bits": bits,
        "block_size": block_size,
        "symmetric": symmetric,
        "accuracy_level": accuracy_level or 0,
        "matmuls_quantized": len(targets),
        "wider_projections": dict(sorted(wider.items())),
        "quantized_weight_bytes": quantized_bytes,
    }
