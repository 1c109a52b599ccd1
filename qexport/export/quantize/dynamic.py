"""int8 weights and activations for CPU: each projection MatMul becomes
`com.microsoft.DynamicQuantizeMatMul` (activations quantized per tensor to uint8 at run time,
weights int8 symmetric per output channel, the layout `quantize_dynamic(per_channel=True)`
produces after onnxruntime's fusion). onnxruntime has CPU kernels only for it.

Weights are `ir.LazyTensor`s quantized when written, with onnxruntime.quantization's
`quantize_nparray` and the symmetric int8 range of `get_qmin_qmax_for_qType`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN
from .targets import Target, drop_initializer, replace_node


def quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per column of a float weight [K, N]: (int8 [K, N], scales fp32 [N]),
    as onnxruntime.quantization's compute_scale_zp(symmetric=True) + quantize_nparray."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType, quantize_nparray

    w = np.asarray(w, dtype=np.float32)
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    absmax = np.maximum(np.abs(w.min(axis=0)), np.abs(w.max(axis=0))).astype(np.float64)
    scale = (2.0 * absmax / (float(qmax) - float(qmin))).astype(np.float32)
    tiny = scale < np.finfo(np.float32).tiny
    scale[tiny] = 1.0
    q = quantize_nparray(TensorProto.INT8, w, scale[None, :], 0)
    return np.ascontiguousarray(q.astype(np.int8)), scale


class _PerChannel:
    def __init__(self, target: Target) -> None:
        self._weight = target.weight
        self._parts: dict[int, np.ndarray] = {}

    def part(self, index: int, name: str) -> ir.TensorProtocol:
        if index not in self._parts:
            tensor = self._weight.const_value
            assert tensor is not None
            q, scale = quantize_per_channel(tensor.numpy())
            self._parts = {0: q, 1: scale}
        return ir.tensor(self._parts.pop(index), name=name)


def apply_dynamic_int8(model: ir.Model, targets: Iterable[Target]) -> dict[str, Any]:
    """Replace each target MatMul by DynamicQuantizeMatMul (in place)."""
    graph = model.graph
    count = 0
    for t in targets:
        q = _PerChannel(t)
        wq = ir.LazyTensor(
            partial(q.part, 0, f"{t.name}_quantized"),
            dtype=ir.DataType.INT8,
            shape=ir.Shape([t.k, t.n]),
            name=f"{t.name}_quantized",
        )
        scale = ir.LazyTensor(
            partial(q.part, 1, f"{t.name}_scale"),
            dtype=ir.DataType.FLOAT,
            shape=ir.Shape([t.n]),
            name=f"{t.name}_scale",
        )
        wq_v = ir.Value(name=wq.name, const_value=wq)
        scale_v = ir.Value(name=scale.name, const_value=scale)
        graph.register_initializer(wq_v)
        graph.register_initializer(scale_v)
        node = ir.Node(
            MS_DOMAIN,
            "DynamicQuantizeMatMul",
            [t.activation, wq_v, scale_v],
            name=(t.node.name or t.name) + "_dynq",
        )
        replace_node(graph, t.node, node)
        drop_initializer(graph, t.weight)
        count += 1
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    return {"matmuls_quantized": count}
