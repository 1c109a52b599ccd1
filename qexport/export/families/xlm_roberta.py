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
from .attention import attend, padding_columns
from .base import FamilyBuilder
from .bert import BertBuilder, BertDims
from .spec import FamilySpec


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
    input_names = FamilyBuilder.input_names  # the one token type is a constant of the graph

    @staticmethod
    def usable_positions(cfg: dict[str, Any]) -> int:
        return int(cfg.get("max_position_embeddings", 514)) - _pad_id(cfg) - 1

    def __init__(self, cfg: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.pad_id = _pad_id(cfg)

    def read_dims(self, cfg: dict[str, Any], max_length: int) -> BertDims:
        usable = self.usable_positions(cfg)
        if max_length > usable:
            raise ValueError(
                f"xlm-roberta: max_length {max_length} exceeds the {usable} positions "
                f"the model has (max_position_embeddings {cfg.get('max_position_embeddings')} "
                f"less pad_token_id {_pad_id(cfg)} + 1)"
            )
        return super().read_dims(cfg, max_length)

    def embeddings(
        self, g: GraphBuilder, input_ids: ir.Value, mask: ir.Value, token_type_ids: ir.Value | None
    ) -> ir.Value:
        """LayerNorm(word[ids] + position[cumsum(mask) * mask + pad] + token_type[0])."""
        x = self.word_embeddings(g, input_ids)
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
        return self.embedding_norm(g, x)

    def key_padding(self, g: GraphBuilder, mask: ir.Value) -> Any:
        """No mask input: the extra q/k/v channels of families/attention.py."""
        head = self.dims.hidden // self.dims.heads
        return padding_columns(g, mask, 1.0 / math.sqrt(head), self.ir_dtype)

    def attention(self, g: GraphBuilder, qkv: ir.Value, qkv_names: list[str]) -> ir.Value:
        """MultiHeadAttention without a mask input, so onnxruntime's CPU kernel takes its flash
        path (memory linear in S); padded keys are masked by one more head channel
        (families/attention.py)."""
        d = self.dims
        head = d.hidden // d.heads
        shape = g.i64([0, 0, d.heads, head])
        x = g.op("Add", qkv, self._bias(g, *qkv_names))
        parts = g.ops("Split", x, self._split, n=3, axis=-1)
        q, k, v = (g.op("Reshape", t, shape) for t in parts)
        return attend(g, q, k, v, self._padding, d.heads, head, 1.0 / math.sqrt(head))


SPEC = FamilySpec(
    name="xlm-roberta",
    builder=XLMRobertaBuilder,
    model_types=("xlm-roberta",),
    strip_prefixes=("roberta.",),
    tokenizer_patch=whitespace_split,
)
