"""Gemma3 text with bidirectional attention (google/embeddinggemma-300m), as transformers'
`Gemma3TextModel` with `use_bidirectional_attention=True`:

- embeddings scaled by sqrt(hidden) (the scale rounded to the compute dtype, as transformers
  casts it to the weights' dtype);
- per layer: RMSNorm -> attention -> post-attention RMSNorm -> + residual -> pre-FFN RMSNorm ->
  GeGLU-tanh MLP -> post-FFN RMSNorm -> + residual. Gemma's RMSNorm scales by (1 + weight):
  the 1 is added to the weights at export;
- attention: q/k RMSNorm per head, rotary with rope_theta on full-attention layers and
  rope_local_base_freq on sliding layers, scale query_pre_attn_scalar^-0.5, kv heads repeated;
  sliding layers see keys with |i - j| < W, where W = sliding_window // 2 + 1 (what
  Gemma3TextConfig makes of config.json's window under bidirectional attention), full layers
  every key; padded keys never. MultiHeadAttention takes no key padding mask (see attention.py);
  the window is an additive [1, 1, S, S] bias on sliding layers only.

The residual stream, every RMSNorm and the post-norms run in fp32 at every precision: with fp16
MatMuls and attention the stream itself would pass 65,504 (onnxruntime#32600; random:gemma3-stress
plants that). Output: the final-normed hidden states, fp32 [B, S, hidden].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import GraphBuilder
from ..weights import convert
from .attention import PAD_LOGIT, attend, padding_columns
from .base import DecoderWidths, FamilyBuilder
from .qwen3 import rope_cache
from .spec import FamilySpec

FLOAT = ir.DataType.FLOAT
SLIDING, FULL = "sliding_attention", "full_attention"


def _rope_thetas(cfg: dict[str, Any]) -> dict[str, float]:
    """rope_theta per layer type, from either config spelling (rope_parameters per layer type,
    or the hub's rope_theta + rope_local_base_freq)."""
    params = cfg.get("rope_parameters") or {}
    if cfg.get("rope_scaling"):
        raise ValueError("gemma3: rope_scaling is not supported")
    thetas = {FULL: float(cfg.get("rope_theta") or 1_000_000.0),
              SLIDING: float(cfg.get("rope_local_base_freq") or 10_000.0)}  # fmt: skip
    for kind in (FULL, SLIDING):
        p = params.get(kind) if isinstance(params, dict) else None
        if p:
            if p.get("rope_type", "default") != "default":
                raise ValueError(f"gemma3: rope_type {p['rope_type']!r} is not supported")
            thetas[kind] = float(p.get("rope_theta", thetas[kind]))
    return thetas


@dataclass(frozen=True)
class Gemma3Dims(DecoderWidths):
    eps: float
    scale: float
    window: int  # keys with |i - j| < window on sliding layers
    layer_types: tuple[str, ...]
    thetas: dict[str, float]
    max_positions: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Gemma3Dims:
        if not cfg.get("use_bidirectional_attention"):
            raise ValueError(
                "gemma3: only use_bidirectional_attention=true (an embedding model such as "
                "EmbeddingGemma) is supported; causal Gemma3 is a generative model"
            )
        for key in ("attn_logit_softcapping", "attention_bias"):
            if cfg.get(key):
                raise ValueError(f"gemma3: {key}={cfg[key]!r} is not supported")
        act = cfg.get("hidden_activation") or cfg.get("hidden_act")
        if act != "gelu_pytorch_tanh":
            raise ValueError(f"gemma3: hidden_activation {act!r} is not supported")
        layers = int(cfg["num_hidden_layers"])
        types = cfg.get("layer_types")
        if types is None:  # transformers' default: every sliding_window_pattern-th layer full
            pattern = int(cfg.get("sliding_window_pattern", 6))
            types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
        if set(types) - {SLIDING, FULL}:
            raise ValueError(f"gemma3: layer types {sorted(set(types))} are not supported")
        return cls(
            **cls.widths(cfg),
            eps=float(cfg.get("rms_norm_eps", 1e-6)),
            scale=float(cfg.get("query_pre_attn_scalar") or 256) ** -0.5,
            window=int(cfg.get("sliding_window") or 4096) // 2 + 1,
            layer_types=tuple(types[:layers]),
            thetas=_rope_thetas(cfg),
            max_positions=int(cfg.get("max_position_embeddings", 2048)),
        )


class Gemma3Builder(FamilyBuilder):
    family = "gemma3"
    dims_type = Gemma3Dims

    def read_dims(self, cfg: dict[str, Any], max_length: int) -> Gemma3Dims:
        dims = Gemma3Dims.from_config(cfg)
        if dims.heads % dims.kv_heads:
            raise ValueError(
                "gemma3: num_attention_heads must be a multiple of num_key_value_heads"
            )
        return dims

    # -- weights --------------------------------------------------------------------------
    def _norm_w(self, g: GraphBuilder, name: str, *, fp32: bool = True) -> ir.Value:
        """Gemma's RMSNorm weight w as the (1 + w) the norm multiplies by, computed in fp32."""
        self._check(name)
        src = self.weights

        def load() -> np.ndarray:
            return convert(src.load(name), np.dtype(np.float32)) + np.float32(1.0)

        return g.weight(name + "+1", src.shape(name), self._dtype(fp32), load)

    # -- graph pieces ---------------------------------------------------------------------
    def _norm(self, g: GraphBuilder, x: ir.Value, name: str) -> ir.Value:
        return g.op(
            "SimplifiedLayerNormalization", x, self._norm_w(g, name), axis=-1, epsilon=self.dims.eps
        )

    def _skip_norm(
        self, g: GraphBuilder, x: ir.Value, residual: ir.Value, name: str
    ) -> tuple[ir.Value, ir.Value]:
        """(RMSNorm(residual + x), residual + x), fp32."""
        return self._skip_rms_norm(g, x, residual, self._norm_w(g, name))

    def _rotary(self, g: GraphBuilder, x: ir.Value, cos: ir.Value, sin: ir.Value) -> ir.Value:
        """x * cos + rotate_half(x) * sin, x [B, S, H, D], cos/sin [S, 1, D]."""
        half = self.dims.head_dim // 2
        x1 = g.op("Slice", x, g.i64([0]), g.i64([half]), g.i64([-1]))
        x2 = g.op("Slice", x, g.i64([half]), g.i64([2 * half]), g.i64([-1]))
        rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    def _rope(self, g: GraphBuilder, theta: float, seq: ir.Value, tag: str) -> tuple[ir.Value, ...]:
        """cos/sin rows 0..S-1 as [S, 1, D] in the compute dtype (fp32 math, as transformers)."""
        cos, sin = rope_cache(self.dims.head_dim, theta, self.max_length)
        out = []
        for name, table in (("cos", cos), ("sin", sin)):
            full = np.concatenate([table, table], axis=-1).astype(self.np_dtype)
            rows = g.op("Slice", g.const(full, f"rope_{tag}_{name}"), g.i64([0]), seq, g.i64([0]))
            out.append(g.op("Unsqueeze", rows, g.i64([1])))
        return tuple(out)

    def _window_bias(self, g: GraphBuilder, seq: ir.Value) -> ir.Value:
        """[1, 1, S, S]: 0 where |i - j| < window, -PAD_LOGIT elsewhere."""
        n = g.op("Squeeze", seq, g.i64([0]))
        r = g.op("Range", g.i64(0), n, g.i64(1))
        dist = g.op("Abs", g.op("Sub", g.op("Unsqueeze", r, g.i64([1])),
                                g.op("Unsqueeze", r, g.i64([0]))))  # fmt: skip
        far = g.op("GreaterOrEqual", dist, g.i64(self.dims.window))
        bias = g.op(
            "Where", far, g.const(np.array(-PAD_LOGIT, dtype=self.np_dtype)),
            g.const(np.array(0.0, dtype=self.np_dtype)),
        )  # fmt: skip
        return g.op("Unsqueeze", bias, g.i64([0, 1]))

    def _kv_heads(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        """[B, S, kv, D] -> [B, S, heads, D], head h reading kv head h // groups (repeat_kv)."""
        d = self.dims
        groups = d.heads // d.kv_heads
        if groups == 1:
            return x
        x = g.op("Expand", g.op("Unsqueeze", x, g.i64([3])), g.i64([1, 1, 1, groups, 1]))
        return g.op("Reshape", x, g.i64([0, 0, d.heads, d.head_dim]))

    def _attention(self, g: GraphBuilder, h: ir.Value, p: str, ctx: dict[str, Any]) -> ir.Value:
        d = self.dims
        kind = d.layer_types[int(p.split(".")[1])]
        q = g.op("MatMul", h, self._w(g, p + "self_attn.q_proj.weight", transpose=True))
        k = g.op("MatMul", h, self._w(g, p + "self_attn.k_proj.weight", transpose=True))
        v = g.op("MatMul", h, self._w(g, p + "self_attn.v_proj.weight", transpose=True))
        q_norm = self._norm_w(g, p + "self_attn.q_norm.weight", fp32=False)
        k_norm = self._norm_w(g, p + "self_attn.k_norm.weight", fp32=False)
        q = g.op("SimplifiedLayerNormalization", g.op("Reshape", q, ctx["q_shape"]), q_norm,
                 axis=-1, epsilon=d.eps)  # fmt: skip
        k = g.op("SimplifiedLayerNormalization", g.op("Reshape", k, ctx["kv_shape"]), k_norm,
                 axis=-1, epsilon=d.eps)  # fmt: skip
        cos, sin = ctx["rope"][kind]
        q = self._rotary(g, q, cos, sin)
        k = self._kv_heads(g, self._rotary(g, k, cos, sin))
        v = self._kv_heads(g, g.op("Reshape", v, ctx["kv_shape"]))
        bias = ctx["window"] if kind == SLIDING else None
        attn = attend(g, q, k, v, ctx["columns"], d.heads, d.head_dim, d.scale, bias)
        return g.op("MatMul", attn, self._w(g, p + "self_attn.o_proj.weight", transpose=True))

    def _mlp(self, g: GraphBuilder, h: ir.Value, p: str) -> ir.Value:
        gate = g.op("MatMul", h, self._w(g, p + "mlp.gate_proj.weight", transpose=True))
        up = g.op("MatMul", h, self._w(g, p + "mlp.up_proj.weight", transpose=True))
        act = g.op("Mul", g.op("Gelu", gate, approximate="tanh"), up)
        return g.op("MatMul", act, self._w(g, p + "mlp.down_proj.weight", transpose=True))

    # -- graph ----------------------------------------------------------------------------
    def build(self, g: GraphBuilder, input_ids: ir.Value, mask: ir.Value) -> ir.Value:
        d = self.dims
        seq = g.op("Shape", input_ids, start=1, end=2)
        kinds = set(d.layer_types[: self.n_layers])
        ctx: dict[str, Any] = {
            "q_shape": g.i64([0, 0, d.heads, d.head_dim]),
            "kv_shape": g.i64([0, 0, d.kv_heads, d.head_dim]),
            "rope": {
                kind: self._rope(g, d.thetas[kind], seq, kind.split("_")[0])
                for kind in sorted(kinds)
            },
            "window": self._window_bias(g, seq) if SLIDING in kinds else None,
            "columns": padding_columns(g, mask, d.scale, self.ir_dtype),
        }
        x = g.op("Gather", self._w(g, "embed_tokens.weight"), input_ids)
        # transformers multiplies by sqrt(hidden) cast to the weights' dtype
        scale = np.float32(np.array(math.sqrt(d.hidden), dtype=self.np_dtype))
        residual = g.op("Mul", self._to_fp32(g, x), g.const(np.array(scale, dtype=np.float32)))
        pending: ir.Value | None = None  # last sublayer output, fp32, not yet added
        for i in range(self.n_layers):
            p = f"layers.{i}."
            w_in = self._norm_w(g, p + "input_layernorm.weight")
            h, residual = self._add_and_norm(g, pending, residual, w_in)
            o = self._attention(g, self._to_compute(g, h), p, ctx)
            o = self._norm(g, self._to_fp32(g, o), p + "post_attention_layernorm.weight")
            h, residual = self._skip_norm(g, o, residual, p + "pre_feedforward_layernorm.weight")
            down = self._mlp(g, self._to_compute(g, h), p)
            pending = self._norm(g, self._to_fp32(g, down), p + "post_feedforward_layernorm.weight")
        return self._add_and_norm(g, pending, residual, self._norm_w(g, "norm.weight"))[0]


SPEC = FamilySpec(
    name="gemma3",
    builder=Gemma3Builder,
    model_types=("gemma3_text",),
    strip_prefixes=("model.",),
    # sentence-transformers prepends a prompt to the text; `instruction` is that prompt
    instruction_template="{instruction}{text}",
    instruction_prompt="query",
    matryoshka_dims=(128, 256, 512, 768),
)
