"""Bidirectional attention with com.microsoft.MultiHeadAttention and no key padding mask.

onnxruntime's CPU MultiHeadAttention runs a flash kernel (memory linear in the sequence) only
when it gets neither a key padding mask nor an attention bias; with a mask it materialises
batch x heads x S x S fp32 scores (4.5 GB for one 8,192-token row of 16 heads, measured). So
padded keys are masked by one more channel per head instead: queries carry c, keys carry
-c on padded positions (0 elsewhere), values 0, and scale * c * c = PAD_LOGIT, the amount
onnxruntime's own mask filter subtracts. The extra output channel is always 0 and is sliced off.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN, GraphBuilder

FLOAT = ir.DataType.FLOAT
PAD_LOGIT = 10000.0


def padding_columns(
    g: GraphBuilder, mask: ir.Value, scale: float, dtype: ir.DataType
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """The extra channel for q, k, v: each [B, S, 1, 1], to broadcast over heads."""
    c = math.sqrt(PAD_LOGIT / scale)
    mf = g.op("Unsqueeze", g.cast(mask, FLOAT), g.i64([2, 3]))  # [B, S, 1, 1]
    zero = g.op("Mul", mf, g.const(np.array(0.0, dtype=np.float32)))
    q_col = g.op("Add", zero, g.const(np.array(c, dtype=np.float32)))
    k_col = g.op(
        "Mul",
        g.op("Sub", g.const(np.array(1.0, dtype=np.float32)), mf),
        g.const(np.array(-c, dtype=np.float32)),
    )
    return tuple(v if dtype == FLOAT else g.cast(v, dtype) for v in (q_col, k_col, zero))  # type: ignore[return-value]


def attend(
    g: GraphBuilder,
    q: ir.Value,
    k: ir.Value,
    v: ir.Value,
    columns: tuple[ir.Value, ir.Value, ir.Value],
    heads: int,
    head_dim: int,
    scale: float,
    bias: ir.Value | None = None,
) -> ir.Value:
    """q, k, v [B, S, heads, head_dim] -> attention output [B, S, heads * head_dim]."""
    expand = g.i64([1, 1, heads, 1])
    flat = g.i64([0, 0, -1])
    parts = [
        g.op("Reshape", g.op("Concat", x, g.op("Expand", col, expand), axis=-1), flat)
        for x, col in zip((q, k, v), columns, strict=True)
    ]
    attn = g.op(
        "MultiHeadAttention", *parts, None, None, bias,
        domain=MS_DOMAIN, num_heads=heads, scale=scale,
    ) if bias is not None else g.op(
        "MultiHeadAttention", *parts, domain=MS_DOMAIN, num_heads=heads, scale=scale
    )  # fmt: skip
    attn = g.op("Reshape", attn, g.i64([0, 0, heads, head_dim + 1]))
    attn = g.op("Slice", attn, g.i64([0]), g.i64([head_dim]), g.i64([-1]))
    return g.op("Reshape", attn, g.i64([0, 0, heads * head_dim]))
