"""What every family's graph builder shares: config parsing, precision bookkeeping, weight
checks and loads, casts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import IR_DTYPES, MS_DOMAIN, NP_DTYPES, GraphBuilder
from ..weights import WeightSource


@dataclass(frozen=True)
class DecoderWidths:
    """The layer count and widths of a decoder-style layer stack (Qwen3, Gemma3)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @staticmethod
    def widths(cfg: dict[str, Any]) -> dict[str, int]:
        """The fields above from config.json (kv heads default to heads, head_dim to
        hidden / heads)."""
        heads = int(cfg["num_attention_heads"])
        return {
            "layers": int(cfg["num_hidden_layers"]),
            "hidden": int(cfg["hidden_size"]),
            "heads": heads,
            "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            "ffn": int(cfg["intermediate_size"]),
        }


class FamilyBuilder:
    """Subclasses set `family`, `dims_type` (a dataclass with `from_config(config) -> dims`)
    and, when the graph takes more than ids and mask, `input_names`; they may add checks in
    `read_dims`, and implement `build(g, *inputs) -> fp32 hidden [B, S, H]`. What the rest of
    the code knows of a family is in its `FamilySpec` (spec.py)."""

    family = ""
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")
    dims_type: Any = None

    def __init__(
        self,
        cfg: dict[str, Any],
        weights: WeightSource,
        precision: str,
        max_length: int,
        layers: int | None = None,
    ) -> None:
        self.dims = self.read_dims(cfg, max_length)
        self.weights = weights
        self.precision = precision
        self.max_length = max_length
        self.n_layers = self.dims.layers if layers is None else layers
        self.np_dtype = NP_DTYPES[precision]
        self.ir_dtype = IR_DTYPES[precision]

    def read_dims(self, cfg: dict[str, Any], max_length: int) -> Any:
        """The family's dims from config.json; subclasses refuse what they cannot export."""
        return self.dims_type.from_config(cfg)

    @property
    def hidden_size(self) -> int:
        return int(self.dims.hidden)

    def _check(self, *names: str) -> None:
        keys = set(self.weights.keys())
        for name in names:
            if name not in keys:
                raise ValueError(f"{self.family}: weight {name!r} missing from the checkpoint")

    def _dtype(self, fp32: bool) -> np.dtype:
        return np.dtype(np.float32) if fp32 else self.np_dtype

    def _w(
        self, g: GraphBuilder, name: str, *, transpose: bool = False, fp32: bool = False
    ) -> ir.Value:
        """A checkpoint tensor in the compute dtype (fp32 when asked); `transpose`: an
        nn.Linear weight [out, in] as the MatMul operand [in, out]."""
        self._check(name)
        src = self.weights
        shape = src.shape(name)
        if transpose:
            return g.weight(name, shape[::-1], self._dtype(fp32), lambda: src.load(name).T)
        return g.weight(name, shape, self._dtype(fp32), lambda: src.load(name))

    def _skip_rms_norm(
        self, g: GraphBuilder, x: ir.Value, residual: ir.Value, weight: ir.Value
    ) -> tuple[ir.Value, ir.Value]:
        """(RMSNorm(residual + x) * weight, residual + x), fp32."""
        out, _, _, total = g.ops(
            "SkipSimplifiedLayerNormalization", x, residual, weight,
            n=4, domain=MS_DOMAIN, epsilon=self.dims.eps,
        )  # fmt: skip
        return out, total

    def _add_and_norm(
        self, g: GraphBuilder, pending: ir.Value | None, residual: ir.Value, weight: ir.Value
    ) -> tuple[ir.Value, ir.Value]:
        """`_skip_rms_norm` of the last sublayer's output; the residual alone (RMSNorm) while
        no sublayer output is pending."""
        if pending is None:
            out = g.op(
                "SimplifiedLayerNormalization", residual, weight, axis=-1, epsilon=self.dims.eps
            )
            return out, residual
        return self._skip_rms_norm(g, pending, residual, weight)

    def _to_compute(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        return x if self.precision == "fp32" else g.cast(x, self.ir_dtype)

    def _to_fp32(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        return x if self.precision == "fp32" else g.cast(x, ir.DataType.FLOAT)
