"""What every family's graph builder shares: precision bookkeeping, weight checks, casts."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from ..graph import IR_DTYPES, NP_DTYPES, GraphBuilder
from ..weights import WeightSource


class FamilyBuilder:
    """Subclasses set `family`, `model_types`, `input_names`, `strip_prefixes`, parse their dims
    in __init__ and implement `build(g, *inputs) -> fp32 hidden [B, S, H]`."""

    family = ""
    model_types: tuple[str, ...] = ()
    input_names: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()

    def __init__(
        self, dims: Any, weights: WeightSource, precision: str, max_length: int, layers: int | None
    ) -> None:
        self.dims = dims
        self.weights = weights
        self.precision = precision
        self.max_length = max_length
        self.n_layers = dims.layers if layers is None else layers
        self.np_dtype = NP_DTYPES[precision]
        self.ir_dtype = IR_DTYPES[precision]

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

    def _to_compute(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        return x if self.precision == "fp32" else g.cast(x, self.ir_dtype)

    def _to_fp32(self, g: GraphBuilder, x: ir.Value) -> ir.Value:
        return x if self.precision == "fp32" else g.cast(x, ir.DataType.FLOAT)
