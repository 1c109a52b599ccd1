"""int8 weights and activations for CPU: each projection MatMul becomes
`com.microsoft.DynamicQuantizeMatMul` (activations quantized per tensor to uint8 at run time,
weights int8 symmetric per output channel, the layout `quantize_dynamic(per_channel=True)`
produces after onnxruntime's fusion). onnxruntime has CPU kernels only for it. Per-token
activation scaling (`_per_token_input`) divides each token by its |max| (its max, where the
activation is bounded below, as GELU's output) before the node and multiplies the output back,
so the per-tensor range is the same [-1, 1] for every token.
Weights are rounded to nearest, or by GPTQ per channel (dynamic_gptq.py, opt-in).

Weights are `ir.LazyTensor`s quantized when written, with onnxruntime.quantization's
`quantize_nparray` and the symmetric int8 range of `get_qmin_qmax_for_qType`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN
from .dynamic_gptq import gptq_per_channel
from .gptq import HessianFactor
from .targets import Target, drop_initializer, replace_node

# per target name: the HessianFactor of what it reads (GPTQ rounding), made when written
Hessians = Mapping[str, Callable[[], HessianFactor]]
# per target name scaled per token: None (r = max |X| per token), or the magnitude m of the
# activation's lower bound (X >= -m everywhere, as GELU's output: r = max(max X, m), no Abs)
PerToken = Mapping[str, float | None]


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
    def __init__(self, target: Target, hessian: Callable[[], HessianFactor] | None) -> None:
        self._weight = target.weight
        self._hessian = hessian
        self._parts: dict[int, np.ndarray] = {}

    def part(self, index: int, name: str) -> ir.TensorProtocol:
        if index not in self._parts:
            tensor = self._weight.const_value
            assert tensor is not None
            w = tensor.numpy().astype(np.float32)
            if self._hessian is None:
                q, scale = quantize_per_channel(w)
            else:
                q, scale = gptq_per_channel(w, self._hessian())
            self._parts = {0: q, 1: scale}
        return ir.tensor(self._parts.pop(index), name=name)


def apply_dynamic_int8(
    model: ir.Model,
    targets: Iterable[Target],
    hessians: Hessians | None = None,
    per_token: PerToken | None = None,
) -> dict[str, Any]:
    """Replace each target MatMul by DynamicQuantizeMatMul (in place); weights rounded to
    nearest, or by GPTQ (dynamic_gptq.py) for the targets in `hessians`; the activations of
    the targets named in `per_token` scaled per token first (`_per_token_input`)."""
    graph = model.graph
    per_token = per_token or {}
    count = 0
    shared: dict[int, tuple[ir.Value, ir.Value]] = {}  # per activation: (X / r, r)
    for t in targets:
        q = _PerChannel(t, (hessians or {}).get(t.name))
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
        x, r = t.activation, None
        if t.name in per_token:
            if id(x) not in shared:
                shared[id(x)] = _per_token_input(graph, t, per_token[t.name])
            x, r = shared[id(x)]
        name = (t.node.name or t.name) + "_dynq"
        node = ir.Node(MS_DOMAIN, "DynamicQuantizeMatMul", [x, wq_v, scale_v], name=name)
        replace_node(graph, t.node, node)
        if r is not None:  # Y = (X / r) W r
            out = node.outputs[0]
            mul = ir.Node("", "Mul", [out, r], name=name + "_rescale")
            graph.insert_after(node, mul)
            out.replace_all_uses_with(mul.outputs[0], replace_graph_outputs=True)
            mul.replace_input_with(0, out)
            mul.outputs[0].name, out.name = out.name, f"{out.name}_per_token"
        drop_initializer(graph, t.weight)
        count += 1
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    return {"matmuls_quantized": count}


PER_TOKEN_FLOOR = 1e-12


def _per_token_input(graph: ir.Graph, t: Target, bound: float | None) -> tuple[ir.Value, ir.Value]:
    """r = max(max_k |X[.., k]|, floor) per token and X / r, inserted before t's MatMul: the
    run-time per-tensor uint8 range of X / r is [-1, 1], so every token gets the full 8 bits
    (per-token activation scaling from per-tensor DynamicQuantizeMatMul). Where X >= -bound
    everywhere (`bound` not None, as GELU's output), r = max(max_k X, bound): the same r
    wherever a token's max exceeds the bound, without the Abs pass. Any r > 0 is exact in
    float; r only sets how finely the token is rounded."""
    x = t.activation
    base = f"{x.name}_pt"
    axes = ir.Value(
        name=f"{base}_axes", const_value=ir.tensor(np.array([-1], np.int64), name=f"{base}_axes")
    )
    floor_value = PER_TOKEN_FLOOR if bound is None else max(bound, PER_TOKEN_FLOOR)
    floor = ir.Value(
        name=f"{base}_floor",
        const_value=ir.tensor(np.array(floor_value, np.float32), name=f"{base}_floor"),
    )
    for v in (axes, floor):
        graph.register_initializer(v)
    nodes = []
    source = x
    if bound is None:
        nodes.append(ir.Node("", "Abs", [x], name=f"{base}_abs"))
        source = nodes[-1].outputs[0]
    rmax = ir.Node(
        "",
        "ReduceMax",
        [source, axes],
        attributes=[ir.AttrInt64("keepdims", 1)],
        name=f"{base}_max",
    )
    r = ir.Node("", "Max", [rmax.outputs[0], floor], name=f"{base}_r")
    div = ir.Node("", "Div", [x, r.outputs[0]], name=f"{base}_div")
    graph.insert_before(t.node, [*nodes, rmax, r, div])
    return div.outputs[0], r.outputs[0]
