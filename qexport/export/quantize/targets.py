"""Which MatMuls a quantization pass may touch: those whose B is a constant 2-D float
initializer (the projections). The embedding Gather, norms and attention never match."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclass
class Target:
    node: ir.Node
    weight: ir.Value  # the initializer B [K, N]

    @property
    def name(self) -> str:
        return self.weight.name or ""

    @property
    def k(self) -> int:
        return _static_dim(self.weight, 0)

    @property
    def n(self) -> int:
        return _static_dim(self.weight, 1)

    @property
    def activation(self) -> ir.Value:
        value = self.node.inputs[0]
        assert value is not None
        return value

    def load(self) -> np.ndarray:
        """The float weight [K, N] (materialised now; nothing keeps it)."""
        tensor = self.weight.const_value
        assert tensor is not None
        return tensor.numpy()


def matmul_targets(graph: ir.Graph) -> list[Target]:
    """MatMul nodes (default domain) whose B is a 2-D float initializer used by that node only."""
    out = []
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        b = node.inputs[1]
        if b is None or not b.is_initializer() or b.const_value is None:
            continue
        tensor = b.const_value
        if tensor.dtype not in FLOAT_TYPES or len(tensor.shape) != 2:
            continue
        if not all(isinstance(d, int) for d in tensor.shape):
            continue
        if len(b.uses()) != 1:  # shared weights (tied) stay float
            continue
        out.append(Target(node, b))
    return out


def replace_node(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """Put `new` where `old` was; `new`'s only output takes over the old output's uses."""
    old_out, new_out = old.outputs[0], new.outputs[0]
    new_out.name = old_out.name
    new_out.type = old_out.type
    new_out.shape = old_out.shape
    graph.insert_before(old, new)
    old_out.replace_all_uses_with(new_out, replace_graph_outputs=True)
    graph.remove(old, safe=True)


def _static_dim(value: ir.Value, axis: int) -> int:
    dim = value.shape[axis] if value.shape is not None else None
    if not isinstance(dim, int):
        raise ValueError(f"{value.name}: dimension {axis} is not static ({dim})")
    return dim


def drop_initializer(graph: ir.Graph, value: ir.Value) -> None:
    if not value.uses() and value.name is not None and value.name in graph.initializers:
        del graph.initializers[value.name]
