"""BERT encoders (all-MiniLM-L6-v2, bge, e5, ...) emitted as onnxruntime's fused operators.

Embeddings: Gather (word, token type) + Slice (positions) + Add + LayerNormalization.
Per layer (post-LN, bidirectional):

    x --MatMul [H, 3H]--> Split q, k, v --MultiHeadAttention(bias, key_padding_mask [B, S])
      --MatMul--> SkipLayerNormalization(skip=x, bias) = x'
    x' --MatMul--> BiasGelu --MatMul--> SkipLayerNormalization(skip=x', bias)

Projections stay plain MatMul (quantizers find them); their biases go into the fused
consumers (MultiHeadAttention's bias, BiasGelu, SkipLayerNormalization's bias), so there is
no separate Add. The hidden stream between layers and every LayerNorm run in fp32 whatever the
compute precision; fp16 covers the MatMuls, attention and GELU. See docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN, GraphBuilder
from .base import FamilyBuilder
from .spec import FamilySpec

FLOAT = ir.DataType.FLOAT
# transformers' ACT2FN name -> the onnxruntime op that computes act(x + bias)
ACTIVATIONS = {"gelu": "BiasGelu"}


@dataclass(frozen=True)
class BertDims:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    type_vocab: int
    max_positions: int
    eps: float
    act: str

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BertDims:
        pos = cfg.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(
                f"bert: position_embedding_type {pos!r} is not supported (only 'absolute')"
            )
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ValueError(
                f"bert: hidden_act {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
            )
        if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
            raise ValueError("bert: decoder / cross-attention BERT is not supported (encoder only)")
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        if hidden % heads:
            raise ValueError(
                f"bert: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            ffn=int(cfg["intermediate_size"]),
            vocab=int(cfg["vocab_size"]),
            type_vocab=int(cfg.get("type_vocab_size", 2) or 0),
            max_positions=int(cfg.get("max_position_embeddings", 512)),
            eps=float(cfg.get("layer_norm_eps", 1e-12)),
            act=act,
        )


class BertBuilder(FamilyBuilder):
    family = "bert"
    # the instance drops token_type_ids when the config has no token types
    input_names: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    dims_type = BertDims

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dims.type_vocab == 0:  # no token types: the graph takes ids and mask only
            self.input_names = FamilyBuilder.input_names

    def read_dims(self, cfg: dict[str, Any], max_length: int) -> BertDims:
        dims = BertDims.from_config(cfg)
        if max_length > dims.max_positions:
            raise ValueError(
                f"bert: max_length {max_length} exceeds max_position_embeddings "
                f"{dims.max_positions}"
            )
        return dims

    # -- weights --------------------------------------------------------------------------
    def _linear(self, g: GraphBuilder, *prefixes: str) -> ir.Value:
        """nn.Linear weights [out, in] of one or more layers -> one MatMul operand [in, sum(out)]."""
        names = [p + ".weight" for p in prefixes]
        self._check(*names)
        src = self.weights
        shapes = [src.shape(n) for n in names]
        shape = (shapes[0][1], sum(s[0] for s in shapes))

        def load() -> np.ndarray:
            return np.concatenate([src.load(n).T for n in names], axis=1)

        return g.weight(names[0] if len(names) == 1 else prefixes[0] + ".qkv", shape,
                        self.np_dtype, load)  # fmt: skip

    def _bias(self, g: GraphBuilder, *prefixes: str, fp32: bool = False) -> ir.Value:
        names = [p + ".bias" for p in prefixes]
        self._check(*names)
        if len(names) == 1:
            return self._w(g, names[0], fp32=fp32)
        src = self.weights
        shape = (sum(src.shape(n)[0] for n in names),)
        dtype = self._dtype(fp32)

        def load() -> np.ndarray:
            return np.concatenate([src.load(n) for n in names])

        return g.weight(prefixes[0] + ".qkv_bias", shape, dtype, load)

    def _skip_ln(
        self, g: GraphBuilder, x: ir.Value, skip: ir.Value, prefix: str, bias: str
    ) -> ir.Value:
        """LayerNorm(x + bias + skip), all fp32."""
        out, _, _, _ = g.ops(
            "SkipLayerNormalization",
            self._to_fp32(g, x),
            skip,
            self._w(g, prefix + ".LayerNorm.weight", fp32=True),
            self._w(g, prefix + ".LayerNorm.bias", fp32=True),
            self._bias(g, bias, fp32=True),
            n=4,
            domain=MS_DOMAIN,
            epsilon=self.dims.eps,
        )
        return out

    # -- graph ----------------------------------------------------------------------------
    def key_padding(self, g: GraphBuilder, mask: ir.Value) -> Any:
        """What attention masks padded keys with: MultiHeadAttention's key_padding_mask."""
        return g.cast(mask, ir.DataType.INT32)  # [B, S]: 0 = padding key

    def attention(self, g: GraphBuilder, qkv: ir.Value, qkv_names: list[str]) -> ir.Value:
        """Bidirectional attention of the fused q|k|v projection (bias not yet added)."""
        q, k, v = g.ops("Split", qkv, self._split, n=3, axis=-1)
        return g.op(
            "MultiHeadAttention",
            q, k, v, self._bias(g, *qkv_names), self._padding,
            domain=MS_DOMAIN, num_heads=self.dims.heads,
        )  # fmt: skip

    def word_embeddings(self, g: GraphBuilder, input_ids: ir.Value) -> ir.Value:
        table = self._w(g, "embeddings.word_embeddings.weight")
        return self._to_fp32(g, g.op("Gather", table, input_ids))

    def embedding_norm(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        return g.op(
            "LayerNormalization",
            x,
            self._w(g, "embeddings.LayerNorm.weight", fp32=True),
            self._w(g, "embeddings.LayerNorm.bias", fp32=True),
            axis=-1,
            epsilon=self.dims.eps,
        )

    def embeddings(
        self, g: GraphBuilder, input_ids: ir.Value, mask: ir.Value, token_type_ids: ir.Value | None
    ) -> ir.Value:
        """LayerNorm(word[ids] + position[0..S-1] + token_type[types]), fp32 [B, S, H]
        (`mask` is for subclasses that count positions from it)."""
        seq = g.op("Shape", input_ids, start=1, end=2)
        x = self.word_embeddings(g, input_ids)
        pos_table = self._w(g, "embeddings.position_embeddings.weight")
        pos = g.op("Slice", pos_table, g.i64([0]), seq, g.i64([0]))  # [S, H]
        x = g.op("Add", x, self._to_fp32(g, pos))
        if token_type_ids is not None:
            types = self._w(g, "embeddings.token_type_embeddings.weight")
            x = g.op("Add", x, self._to_fp32(g, g.op("Gather", types, token_type_ids)))
        return self.embedding_norm(g, x)

    def build(
        self,
        g: GraphBuilder,
        input_ids: ir.Value,
        mask: ir.Value,
        token_type_ids: ir.Value | None = None,
    ) -> ir.Value:
        """Returns the last hidden state, fp32 [B, S, hidden]."""
        self._padding = self.key_padding(g, mask)
        self._split = g.i64([self.dims.hidden] * 3)
        return self.layers(g, self.embeddings(g, input_ids, mask, token_type_ids))

    def layers(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        """The post-LN blocks over the embeddings x (fp32 [B, S, H])."""
        d = self.dims
        act = ACTIVATIONS[d.act]
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            qkv_names = [p + "attention.self." + n for n in ("query", "key", "value")]
            h = self._to_compute(g, x)
            qkv = g.op("MatMul", h, self._linear(g, *qkv_names))
            attn = self.attention(g, qkv, qkv_names)
            o = g.op("MatMul", attn, self._linear(g, p + "attention.output.dense"))
            x = self._skip_ln(g, o, x, p + "attention.output", p + "attention.output.dense")
            h = self._to_compute(g, x)
            up = g.op("MatMul", h, self._linear(g, p + "intermediate.dense"))
            up = g.op(act, up, self._bias(g, p + "intermediate.dense"), domain=MS_DOMAIN)
            down = g.op("MatMul", up, self._linear(g, p + "output.dense"))
            x = self._skip_ln(g, down, x, p + "output", p + "output.dense")
        return x


SPEC = FamilySpec(
    name="bert",
    builder=BertBuilder,
    model_types=("bert",),
    strip_prefixes=("bert.",),
    # per token on the FFN output projection only: all-MiniLM-L6-v2 held-out min cosine 0.9962
    # (0.9959 per token everywhere) at 1.13x its speed (docs/benchmarks.md, issue 28)
    int8_dynamic_per_token="ffn",
)
