"""Each task's graph head (`HEADS`, by task name), on the family's final hidden states
[B, S, H] fp32 and the attention mask:

* embed: pooling (one small class per strategy, as sentence-transformers' Pooling modes),
  sentence-transformers' Dense layers, L2 normalisation -> `sentence_embedding` [B, dim]
  (and `token_embeddings` [B, S, H] when asked);
* rerank: the last real token's hidden state . (W_yes - W_no) -> `logit` [B], and
  `score` = sigmoid(logit) [B] (export/rerank.py: why, and the vector).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx_ir as ir

from ..manifest import RerankPrompt
from .graph import GraphBuilder
from .rerank import head_vector
from .st_dense import DenseLayer, apply_dense, check_chain

if TYPE_CHECKING:
    from .source import ModelSource


class Pooling:
    name: ClassVar[str]

    def __call__(self, g: GraphBuilder, hidden: ir.Value, mask: ir.Value) -> ir.Value:
        raise NotImplementedError


def _mask_f(g: GraphBuilder, mask: ir.Value) -> ir.Value:
    """mask [B, S] int64 -> float [B, S, 1]."""
    return g.op("Unsqueeze", g.cast(mask, ir.DataType.FLOAT), g.i64([-1]))


class LastTokenPooling(Pooling):
    """The hidden state at the last position where attention_mask is 1 (right padding)."""

    name = "lasttoken"

    def __call__(self, g: GraphBuilder, hidden: ir.Value, mask: ir.Value) -> ir.Value:
        length = g.op("ReduceSum", mask, g.i64([1]), keepdims=0)
        last = g.op("Sub", length, g.i64(1))
        index = g.op("Unsqueeze", last, g.i64([1]))  # [B, 1]
        return g.op("GatherND", hidden, index, batch_dims=1)


class MeanPooling(Pooling):
    name = "mean"
    sqrt_len: ClassVar[bool] = False

    def __call__(self, g: GraphBuilder, hidden: ir.Value, mask: ir.Value) -> ir.Value:
        m = _mask_f(g, mask)
        summed = g.op("ReduceSum", g.op("Mul", hidden, m), g.i64([1]), keepdims=0)
        count = g.op("ReduceSum", m, g.i64([1]), keepdims=0)  # [B, 1]
        count = g.op("Max", count, g.const(np.array(1e-9, dtype=np.float32)))
        if self.sqrt_len:
            count = g.op("Sqrt", count)
        return g.op("Div", summed, count)


class MeanSqrtLenPooling(MeanPooling):
    name = "mean_sqrt_len"
    sqrt_len = True


class ClsPooling(Pooling):
    name = "cls"

    def __call__(self, g: GraphBuilder, hidden: ir.Value, mask: ir.Value) -> ir.Value:
        return g.op("Gather", hidden, g.i64(0), axis=1)


class MaxPooling(Pooling):
    name = "max"

    def __call__(self, g: GraphBuilder, hidden: ir.Value, mask: ir.Value) -> ir.Value:
        # sentence-transformers sets padded positions to -1e9 before the max
        m = _mask_f(g, mask)
        neg = g.op(
            "Mul",
            g.op("Sub", g.const(np.array(1.0, dtype=np.float32)), m),
            g.const(np.array(-1e9, dtype=np.float32)),
        )
        return g.op("ReduceMax", g.op("Add", g.op("Mul", hidden, m), neg), g.i64([1]), keepdims=0)


POOLINGS: dict[str, type[Pooling]] = {
    cls.name: cls
    for cls in (LastTokenPooling, MeanPooling, MeanSqrtLenPooling, ClsPooling, MaxPooling)
}


def l2_normalize(g: GraphBuilder, x: ir.Value) -> ir.Value:
    """x / max(||x||_2, 1e-12), as torch.nn.functional.normalize."""
    norm = g.op("ReduceL2", x, g.i64([-1]), keepdims=1)
    norm = g.op("Max", norm, g.const(np.array(1e-12, dtype=np.float32)))
    return g.op("Div", x, norm)


def pool_and_normalize(
    g: GraphBuilder,
    hidden: ir.Value,
    mask: ir.Value,
    pooling: str,
    normalize: bool,
    dense: Sequence[DenseLayer] = (),
) -> ir.Value:
    """Pooling, then sentence-transformers' Dense layers (if any), then L2 normalisation."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not supported (supported: {', '.join(POOLINGS)})")
    pooled = POOLINGS[pooling]()(g, hidden, mask)
    if dense:
        pooled = apply_dense(g, pooled, list(dense))
    return l2_normalize(g, pooled) if normalize else pooled


@dataclass(frozen=True)
class HeadInput:
    """What a head builder is given besides the graph."""

    src: ModelSource
    hidden: ir.Value  # [B, S, H] fp32, after the family's final norm
    mask: ir.Value  # attention_mask [B, S] int64
    hidden_size: int
    token_embeddings: bool = False
    prompt: RerankPrompt | None = None


def embed_head(g: GraphBuilder, x: HeadInput) -> int:
    """sentence_embedding (and token_embeddings); returns the embedding width."""
    head = x.src.head
    dim = check_chain(head.dense, x.hidden_size)  # Dense layers change the width
    emb = pool_and_normalize(g, x.hidden, x.mask, head.pooling, head.normalize, head.dense)
    g.output(emb, "sentence_embedding", ["batch", dim])
    if x.token_embeddings:
        m = g.op("Unsqueeze", g.cast(x.mask, ir.DataType.FLOAT), g.i64([-1]))
        g.output(g.op("Mul", x.hidden, m), "token_embeddings", ["batch", "sequence", x.hidden_size])
    return dim


def rerank_head(g: GraphBuilder, x: HeadInput) -> int:
    """score and logit, one per pair; returns 1 (one number per row)."""
    assert x.prompt is not None
    last = LastTokenPooling()(g, x.hidden, x.mask)  # [B, H]
    w = g.const(head_vector(x.src, x.prompt.yes_id, x.prompt.no_id), "score_weight_yes_minus_no")
    # Mul + ReduceSum rather than MatMul with a [H, 1] weight: quantizers never touch it
    logit = g.op("ReduceSum", g.op("Mul", last, w), g.i64([-1]), keepdims=0)
    g.output(g.op("Sigmoid", logit), "score", ["batch"])
    g.output(logit, "logit", ["batch"])
    return 1


@dataclass(frozen=True)
class Head:
    build: Callable[[GraphBuilder, HeadInput], int]
    graph_suffix: str  # appended to the graph's name (qexport_<family><suffix>)
    # the graph's doc string names the export precision (embed) or the float graph's (rerank)
    doc_precision: str  # "export" | "compute"
    doc_label: str = ""


HEADS: dict[str, Head] = {
    "embed": Head(embed_head, "", "export"),
    "rerank": Head(rerank_head, "_rerank", "compute", " rerank"),
}
