"""XLM-RoBERTa encoders (BAAI/bge-m3 dense, intfloat/multilingual-e5-*): the BERT graph with
RoBERTa's embeddings.

- Positions are counted from the padding id, as transformers'
  `create_position_ids_from_input_ids`: position = cumsum(mask) * mask + pad_token_id, so the
  first real token sits at pad_token_id + 1 and a model with max_position_embeddings P takes
  at most P - pad_token_id - 1 tokens (8,194 -> 8,192 for bge-m3). The mask is the attention
  mask (right padding): the same as transformers' `input_ids != pad_token_id` whenever no
  `<pad>` token sits inside a text.
- One token type (type_vocab_size 1): its row is added as a constant, so the graph takes only
  input_ids and attention_mask.
- Blocks: post-LayerNorm, as BERT (MultiHeadAttention with a key padding mask, BiasGelu,
  SkipLayerNormalization).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN, GraphBuilder
from ..weights import WeightSource
from .bert import BertBuilder

FLOAT = ir.DataType.FLOAT
PAD_LOGIT = 10000.0  # what a padded key's logit loses (onnxruntime's mask_filter_value)


def whitespace_split(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """transformers' XLMRobertaTokenizer (5.x) splits on whitespace before Metaspace, as
    SentencePiece drops leading, trailing and repeated spaces; the hub's tokenizer.json has a
    bare Metaspace, which turns a trailing space into one more '▁' token. The artifact gets
    the pre-tokenizer transformers uses, so both tokenise alike."""
    pre = tokenizer.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace":
        tokenizer["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [{"type": "WhitespaceSplit"}, pre],
        }
    return tokenizer


def _pad_id(cfg: dict[str, Any]) -> int:
    pad = cfg.get("pad_token_id")
    return 1 if pad is None else int(pad)


class XLMRobertaBuilder(BertBuilder):
    family = "xlm-roberta"
    model_types = ("xlm-roberta",)
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    strip_prefixes = ("roberta.",)

    @staticmethod
    def usable_positions(cfg: dict[str, Any]) -> int:
        return int(cfg.get("max_position_embeddings", 514)) - _pad_id(cfg) - 1

    def __init__(
        self,
        cfg: dict[str, Any],
        weights: WeightSource,
        precision: str,
        max_length: int,
        layers: int | None = None,
    ) -> None:
        usable = self.usable_positions(cfg)
        if max_length > usable:
            raise ValueError(
                f"xlm-roberta: max_length {max_length} exceeds the {usable} positions "
                f"the model has (max_position_embeddings {cfg.get('max_position_embeddings')} "
                f"less pad_token_id {_pad_id(cfg)} + 1)"
            )
        super().__init__(cfg, weights, precision, max_length, layers)
        self.pad_id = _pad_id(cfg)
        self.input_names = ("input_ids", "attention_mask")

    def _embeddings(self, g: GraphBuilder, input_ids: ir.Value, mask: ir.Value) -> ir.Value:
        """LayerNorm(word[ids] + position[cumsum(mask) * mask + pad] + token_type[0])."""
        x = self._to_fp32(
            g, g.op("Gather", self._w(g, "embeddings.word_embeddings.weight"), input_ids)
        )
        positions = g.op(
            "Add",
            g.op("Mul", g.op("CumSum", mask, g.i64(1)), mask),
            g.i64(self.pad_id),
        )
        pos_table = self._w(g, "embeddings.position_embeddings.weight")
        x = g.op("Add", x, self._to_fp32(g, g.op("Gather", pos_table, positions)))
        if "embeddings.token_type_embeddings.weight" in set(self.weights.keys()):
            types = self._w(g, "embeddings.token_type_embeddings.weight")
            x = g.op("Add", x, self._to_fp32(g, g.op("Gather", types, g.i64(0))))
        return g.op(
            "LayerNormalization",
            x,
            self._w(g, "embeddings.LayerNorm.weight", fp32=True),
            self._w(g, "embeddings.LayerNorm.bias", fp32=True),
            axis=-1,
            epsilon=self.dims.eps,
        )

    def build(
        self,
        g: GraphBuilder,
        input_ids: ir.Value,
        mask: ir.Value,
        token_type_ids: ir.Value | None = None,
    ) -> ir.Value:
        """Returns the last hidden state, fp32 [B, S, hidden]."""
        d = self.dims
        extra = self._padding_channel(g, mask)
        split = g.i64([d.heads * (d.hidden // d.heads + 1)] * 3)
        x = self._embeddings(g, input_ids, mask)
        return self.layers(g, x, extra, split)

    def _padding_channel(self, g: GraphBuilder, mask: ir.Value) -> ir.Value:
        """The extra head channel [B, S, 3, heads, 1] that masks padded keys (see attention):
        c for queries, -(1 - mask) * c for keys, 0 for values."""
        d = self.dims
        c = math.sqrt(PAD_LOGIT * math.sqrt(d.hidden // d.heads))  # scale * c * c = PAD_LOGIT
        mf = g.op("Unsqueeze", g.cast(mask, FLOAT), g.i64([-1]))  # [B, S, 1]
        zero = g.op("Mul", mf, g.const(np.array(0.0, dtype=np.float32)))
        q_col = g.op("Add", zero, g.const(np.array(c, dtype=np.float32)))
        k_col = g.op(
            "Mul",
            g.op("Sub", g.const(np.array(1.0, dtype=np.float32)), mf),
            g.const(np.array(-c, dtype=np.float32)),
        )
        extra = g.op("Concat", q_col, k_col, zero, axis=-1)  # [B, S, 3]
        extra = g.op("Unsqueeze", extra, g.i64([3, 4]))  # [B, S, 3, 1, 1]
        extra = g.op("Expand", extra, g.i64([1, 1, 1, d.heads, 1]))
        return self._to_compute(g, extra)

    def attention(
        self,
        g: GraphBuilder,
        qkv: ir.Value,
        qkv_names: list[str],
        key_padding_mask: ir.Value,
        split: ir.Value,
    ) -> ir.Value:
        """MultiHeadAttention without a mask input, so onnxruntime's CPU kernel takes its flash
        path (memory linear in S); with a key padding mask it materialises batch x heads x S x S
        (4.5 GB for one 8,192-token row of bge-m3's 16 heads, measured). Padded keys are masked
        by one more head channel instead: q gets c, k gets -c on padded rows, v 0, so a padded
        key's logit drops by PAD_LOGIT (as onnxruntime's own mask filter value) and the extra
        output channel, always 0, is sliced away. `key_padding_mask` here is that channel."""
        d = self.dims
        head = d.hidden // d.heads
        x = g.op("Add", qkv, self._bias(g, *qkv_names))
        x = g.op("Reshape", x, g.i64([0, 0, 3, d.heads, head]))
        x = g.op("Concat", x, key_padding_mask, axis=-1)  # [B, S, 3, heads, head + 1]
        q, k, v = g.ops("Split", g.op("Reshape", x, g.i64([0, 0, -1])), split, n=3, axis=-1)
        attn = g.op(
            "MultiHeadAttention", q, k, v,
            domain=MS_DOMAIN, num_heads=d.heads, scale=1.0 / math.sqrt(head),
        )  # fmt: skip
        attn = g.op("Reshape", attn, g.i64([0, 0, d.heads, head + 1]))
        attn = g.op("Slice", attn, g.i64([0]), g.i64([head]), g.i64([-1]))
        return g.op("Reshape", attn, g.i64([0, 0, d.hidden]))
