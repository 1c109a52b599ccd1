"""Qwen3 decoder emitted directly as the fused operators onnxruntime runs best.

Per layer: SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (RMSNorm and
residual add + RMSNorm), q/k/v/o and MLP projections as plain MatMul (so quantizers find
them), per-head q/k RMSNorm as SimplifiedLayerNormalization over head_dim, and
com.microsoft.GroupQueryAttention in prompt-only form with rotary applied inside
(do_rotary, cos/sin caches of max_length rows). The residual stream and every norm run in
fp32 whatever the compute precision, so fp16 cannot overflow there. See docs/design.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import MS_DOMAIN, GraphBuilder
from .base import DecoderWidths, FamilyBuilder
from .spec import LAST_TOKEN_CARD, FamilySpec

FLOAT = ir.DataType.FLOAT

QWEN3_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
QWEN3_DIMS = (32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096)


@dataclass(frozen=True)
class Qwen3Dims(DecoderWidths):
    vocab: int
    eps: float
    rope_theta: float
    max_positions: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Qwen3Dims:
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or {}
        rope_type = (
            rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        )
        if rope_type != "default":
            raise ValueError(f"qwen3: rope_type {rope_type!r} is not supported (only 'default')")
        if cfg.get("use_sliding_window"):
            raise ValueError("qwen3: sliding-window attention is not supported")
        if cfg.get("attention_bias"):
            raise ValueError("qwen3: attention_bias=True is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"qwen3: hidden_act {cfg.get('hidden_act')!r} is not supported")
        return cls(
            **cls.widths(cfg),
            vocab=cfg["vocab_size"],
            eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0),
            max_positions=int(cfg.get("max_position_embeddings", 32768)),
        )


def rope_cache(head_dim: int, theta: float, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [rows, head_dim/2], computed in fp32 exactly as transformers' default rope."""
    inv_freq = (
        1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    ).astype(np.float32)
    freqs = np.arange(rows, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


class Qwen3Builder(FamilyBuilder):
    family = "qwen3"
    dims_type = Qwen3Dims

    def read_dims(self, cfg: dict[str, Any], max_length: int) -> Qwen3Dims:
        dims = Qwen3Dims.from_config(cfg)
        if dims.head_dim % 16:
            raise ValueError(
                f"qwen3: head_dim {dims.head_dim} must be a multiple of 16 for GroupQueryAttention"
            )
        return dims

    # -- graph ----------------------------------------------------------------------------
    def _head_norm(self, g: GraphBuilder, x: ir.Value, shape: ir.Value, name: str) -> ir.Value:
        """RMSNorm over head_dim of x reshaped to [B, S, heads, head_dim] (q_norm, k_norm)."""
        x = g.op("Reshape", x, shape)
        return g.op(
            "SimplifiedLayerNormalization", x, self._w(g, name), axis=-1, epsilon=self.dims.eps
        )

    @staticmethod
    def _present_length(g: GraphBuilder, present_k: ir.Value, present_v: ir.Value) -> ir.Value:
        """The total sequence length (int32 scalar) read off a layer's present K/V shapes."""
        length = g.op(
            "Max",
            g.op("Shape", present_k, start=2, end=3),
            g.op("Shape", present_v, start=2, end=3),
        )
        return g.cast(g.op("Squeeze", length, g.i64([0])), ir.DataType.INT32)

    def build(self, g: GraphBuilder, input_ids: ir.Value, mask: ir.Value) -> ir.Value:
        """Returns the final-normed hidden states, fp32 [B, S, hidden]."""
        d = self.dims
        length = g.op("ReduceSum", mask, g.i64([1]), keepdims=0)  # [B] int64
        seqlens_k = g.cast(g.op("Sub", length, g.i64(1)), ir.DataType.INT32)
        seq = g.op("Squeeze", g.op("Shape", input_ids, start=1, end=2), g.i64([0]))
        total_len = g.cast(seq, ir.DataType.INT32)
        cos, sin = rope_cache(d.head_dim, d.rope_theta, self.max_length)
        cos_v = g.const(cos.astype(self.np_dtype), "rope_cos_cache")
        sin_v = g.const(sin.astype(self.np_dtype), "rope_sin_cache")
        q_shape = g.i64([0, 0, d.heads, d.head_dim])
        kv_shape = g.i64([0, 0, d.kv_heads, d.head_dim])
        flat = g.i64([0, 0, -1])

        x = g.op("Gather", self._w(g, "embed_tokens.weight"), input_ids)
        residual = self._to_fp32(g, x)
        pending: ir.Value | None = None  # last sublayer output, fp32, not yet added
        for i in range(self.n_layers):
            p = f"layers.{i}."
            # attention block
            w_in = self._w(g, p + "input_layernorm.weight", fp32=True)
            h, residual = self._add_and_norm(g, pending, residual, w_in)
            h = self._to_compute(g, h)
            q = g.op("MatMul", h, self._w(g, p + "self_attn.q_proj.weight", transpose=True))
            k = g.op("MatMul", h, self._w(g, p + "self_attn.k_proj.weight", transpose=True))
            v = g.op("MatMul", h, self._w(g, p + "self_attn.v_proj.weight", transpose=True))
            q = self._head_norm(g, q, q_shape, p + "self_attn.q_norm.weight")
            k = self._head_norm(g, k, kv_shape, p + "self_attn.k_norm.weight")
            attn, present_k, present_v = g.ops(
                "GroupQueryAttention",
                g.op("Reshape", q, flat), g.op("Reshape", k, flat), v,
                None, None, seqlens_k, total_len, cos_v, sin_v,
                n=3, domain=MS_DOMAIN,
                num_heads=d.heads, kv_num_heads=d.kv_heads, do_rotary=1, rotary_interleaved=0,
                scale=1.0 / math.sqrt(d.head_dim),
            )  # fmt: skip
            # present K/V ([B, kv_heads, S, head_dim] each) are useless to a prompt-only
            # encoder but cannot be omitted (the CPU flash kernel writes K/V into them), and an
            # output nobody reads lives until the end of the run in onnxruntime: 4 layers of
            # the 0.6B width kept 256 MB of dead K/V at 8k tokens. So the next layer reads its
            # total sequence length (the same padded length) off their shapes: consumed, they
            # are freed once that Shape has run. See docs/design.md.
            if i + 1 < self.n_layers:
                total_len = self._present_length(g, present_k, present_v)
            o = g.op("MatMul", attn, self._w(g, p + "self_attn.o_proj.weight", transpose=True))
            # MLP block
            w_post = self._w(g, p + "post_attention_layernorm.weight", fp32=True)
            h, residual = self._skip_rms_norm(g, self._to_fp32(g, o), residual, w_post)
            h = self._to_compute(g, h)
            gate = g.op("MatMul", h, self._w(g, p + "mlp.gate_proj.weight", transpose=True))
            up = g.op("MatMul", h, self._w(g, p + "mlp.up_proj.weight", transpose=True))
            act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
            down = g.op("MatMul", act, self._w(g, p + "mlp.down_proj.weight", transpose=True))
            pending = self._to_fp32(g, down)
        w_final = self._w(g, "norm.weight", fp32=True)
        return self._add_and_norm(g, pending, residual, w_final)[0]


SPEC = FamilySpec(
    name="qwen3",
    builder=Qwen3Builder,
    model_types=("qwen3",),
    strip_prefixes=("model.",),
    default_head=("lasttoken", True),
    instruction_template=QWEN3_TEMPLATE,
    default_instruction=QWEN3_QUERY_TASK,
    default_prompts=MappingProxyType(
        {"query": QWEN3_TEMPLATE.format(instruction=QWEN3_QUERY_TASK, text=""), "document": ""}
    ),
    matryoshka_dims=QWEN3_DIMS,
    reference=LAST_TOKEN_CARD,
    rerank_architectures=("Qwen3ForCausalLM",),
)
