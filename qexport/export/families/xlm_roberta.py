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

import onnx_ir as ir

from ..graph import GraphBuilder
from ..weights import WeightSource
from .attention import attend, padding_columns
from .bert import BertBuilder


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
        head = d.hidden // d.heads
        self._columns = padding_columns(g, mask, 1.0 / math.sqrt(head), self.ir_dtype)
        split = g.i64([d.hidden] * 3)
        x = self._embeddings(g, input_ids, mask)
        return self.layers(g, x, mask, split)

    def attention(
        self,
        g: GraphBuilder,
        qkv: ir.Value,
        qkv_names: list[str],
        key_padding_mask: ir.Value,
        split: ir.Value,
    ) -> ir.Value:
        """MultiHeadAttention without a mask input, so onnxruntime's CPU kernel takes its flash
        path (memory linear in S); padded keys are masked by one more head channel
        (families/attention.py). `key_padding_mask` is unused here."""
        d = self.dims
        head = d.hidden // d.heads
        shape = g.i64([0, 0, d.heads, head])
        x = g.op("Add", qkv, self._bias(g, *qkv_names))
        q, k, v = (g.op("Reshape", t, shape) for t in g.ops("Split", x, split, n=3, axis=-1))
        return attend(g, q, k, v, self._columns, d.heads, head, 1.0 / math.sqrt(head))
