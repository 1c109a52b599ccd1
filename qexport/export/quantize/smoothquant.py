"""SmoothQuant-style scale migration (Xiao et al., 2023) before dynamic int8.

For a group of MatMuls reading the same activation X [.., K], per-channel factors
s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha) move the outliers from the activation into
the weights: X' = X / s, W' = diag(s) W, so X' W' = X W exactly in float while X' has a far
smaller dynamic range for the per-tensor int8 activation quantization. The division is
folded into what produces X, where that is exact:

- a norm (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization,
  LayerNormalization, SkipLayerNormalization) whose normalised output feeds only this group:
  gamma (and beta) / s;
- a Mul(a, b) where b is another projection's output used only here (Qwen3's
  silu(gate) * up before down_proj): that projection's weight columns / s;
- otherwise an explicit `Mul(X, 1/s)` is inserted.

All rewrites are `ir.LazyTensor`s over the existing weights: nothing is materialised here
except one weight at a time to read its row |max|.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .targets import Target

# op_type -> (gamma input index, beta input index or None)
NORMS: dict[str, tuple[int, int | None]] = {
    "SimplifiedLayerNormalization": (1, None),
    "SkipSimplifiedLayerNormalization": (2, None),
    "LayerNormalization": (1, 2),
    "SkipLayerNormalization": (2, 3),
}
S_MIN, S_MAX = 1e-3, 1e3


@dataclass
class Group:
    activation: ir.Value
    targets: list[Target]


def group_targets(targets: Sequence[Target]) -> list[Group]:
    groups: dict[int, Group] = {}
    for t in targets:
        key = id(t.activation)
        if key not in groups:
            groups[key] = Group(t.activation, [])
        groups[key].targets.append(t)
    return list(groups.values())


def chunk_groups(groups: Sequence[Group], budget: int) -> list[list[Group]]:
    """The groups in order, in chunks whose float32 X^T X together fit `budget` bytes (a chunk
    holds at least one group)."""
    chunks: list[list[Group]] = [[]]
    size = 0
    for g in groups:
        need = 4 * g.targets[0].k ** 2
        if chunks[-1] and size + need > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(g)
        size += need
    return chunks


def group_weight(group: Group) -> np.ndarray:
    """The group's weights side by side, fp32 [K, sum N] (materialised now)."""
    return np.concatenate([t.load().astype(np.float32) for t in group.targets], axis=1)


def smoothing_factors(w: np.ndarray, act_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s [K] from the activation's per-channel |max| and the weight rows' |max|."""
    w_absmax = np.abs(w).max(axis=1).astype(np.float64)
    a = act_absmax.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(a, alpha) / np.power(w_absmax, 1.0 - alpha)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, S_MIN, S_MAX).astype(np.float32)


def simulated_error(
    x: np.ndarray,
    w: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    s: np.ndarray | None,
    per_token: bool = False,
) -> float:
    """Relative error ||Q(X/s) Q(sW) - XW|| / ||XW|| of DynamicQuantizeMatMul's arithmetic on
    sample rows X: activations uint8 over the calibration range (DynamicQuantizeLinear), or
    per token (each row over its own |max|: dynamic._per_token_input), weights int8 per
    column (dynamic.quantize_per_channel)."""
    from .dynamic import quantize_per_channel

    if s is not None:
        x, w, lo, hi = x / s, w * s[:, None], lo / s, hi / s
    r = np.ones((len(x), 1), dtype=np.float32)
    if per_token:
        r = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12)
        x = x / r
        lo, hi = x.min(axis=0), x.max(axis=0)
    rmin, rmax = min(float(lo.min()), 0.0), max(float(hi.max()), 0.0)
    scale = (rmax - rmin) / 255.0 or 1.0
    zp = float(np.clip(np.round(-rmin / scale), 0, 255))
    xq = (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale
    x, xq = x * r, xq * r
    wq, ws = quantize_per_channel(w)
    y = x.astype(np.float64) @ w
    yq = xq.astype(np.float64) @ (wq.astype(np.float64) * ws)
    return float(np.linalg.norm(yq - y) / max(float(np.linalg.norm(y)), 1e-30))


def _scaled(tensor: ir.TensorProtocol, factor: np.ndarray, axis: int | None) -> ir.LazyTensor:
    """tensor * factor along `axis` (None: 1-D tensor), computed when written."""

    def make() -> ir.TensorProtocol:
        arr = tensor.numpy()
        f = factor if axis is None else np.expand_dims(factor, 1 - axis)
        return ir.tensor((arr.astype(np.float32) * f).astype(arr.dtype), name=tensor.name)

    return ir.LazyTensor(
        make, dtype=tensor.dtype, shape=ir.Shape(tensor.shape.numpy()), name=tensor.name
    )


def _sole_initializer(value: ir.Value | None) -> bool:
    return (
        value is not None
        and value.is_initializer()
        and value.const_value is not None
        and len(value.uses()) == 1
    )


def fold_site(group: Group, all_targets: Sequence[Target]) -> str:
    """Where apply_smoothing would put the group's division by s, without changing anything:
    'norm' (the norm producing X feeds only this group), 'producer' (X = a * b with b another
    projection's output used only here), or 'mul' (an explicit Mul must be inserted)."""
    return _fold(group, all_targets)[0]


def _fold(group: Group, all_targets: Sequence[Target]) -> tuple[str, list[ir.Value]]:
    """fold_site and what it would rescale: the norm's gamma (and beta), or the producing
    projection's weight."""
    x = group.activation
    group_nodes = {id(t.node) for t in group.targets}
    consumers = [use.node for use in x.uses()]
    only_group = all(id(n) in group_nodes for n in consumers) and not x.is_graph_output()
    producer = x.producer()
    if not only_group or producer is None:
        return "mul", []
    if producer.op_type in NORMS and x.index() == 0:
        gi, bi = NORMS[producer.op_type]
        gamma = producer.inputs[gi] if gi < len(producer.inputs) else None
        beta = producer.inputs[bi] if bi is not None and bi < len(producer.inputs) else None
        if _sole_initializer(gamma) and (beta is None or _sole_initializer(beta)):
            return "norm", [v for v in (gamma, beta) if v is not None]
    if producer.op_type == "Mul":
        by_output = {id(t.node.outputs[0]): t for t in all_targets}
        for side in producer.inputs:
            t = by_output.get(id(side)) if side is not None else None
            if t is not None and len(side.uses()) == 1:  # type: ignore[union-attr]
                return "producer", [t.weight]
    return "mul", []


def apply_smoothing(
    graph: ir.Graph, group: Group, s: np.ndarray, all_targets: Sequence[Target]
) -> str:
    """Rewrite the graph so that the group's MatMuls see X / s and hold diag(s) W.
    Returns where the division went: 'norm', 'producer' or 'mul'."""
    x = group.activation
    inv = (1.0 / s).astype(np.float32)
    where, values = _fold(group, all_targets)
    if where == "norm":
        for v in values:  # gamma (and beta) / s
            v.const_value = _scaled(v.const_value, inv, None)  # type: ignore[arg-type]
    elif where == "producer":  # the producing projection's output columns / s
        values[0].const_value = _scaled(values[0].const_value, inv, 1)  # type: ignore[arg-type]
    else:
        dtype = x.dtype or ir.DataType.FLOAT
        inv_v = ir.Value(
            name=f"{x.name}_smooth_inv",
            const_value=ir.tensor(inv.astype(dtype.numpy()), name=f"{x.name}_smooth_inv"),
        )
        graph.register_initializer(inv_v)
        mul = ir.Node("", "Mul", [x, inv_v], name=f"{x.name}_smooth")
        graph.insert_before(group.targets[0].node, mul)
        for t in group.targets:
            t.node.replace_input_with(0, mul.outputs[0])
    for t in group.targets:
        t.weight.const_value = _scaled(t.weight.const_value, s, 0)  # type: ignore[arg-type]
    return where
