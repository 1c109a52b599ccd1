"""Quantization passes over the float onnx-ir graph, before it is written.

- int8 / int4: weight-only `MatMulNBits` (weight_only.py, matmul_nbits.py, gptq.py), on the
  fp32 (CPU) or fp16 (CUDA) graph; embedding table, norms and attention stay float.
- int8-dynamic (CPU only): `DynamicQuantizeMatMul` with SmoothQuant scale migration from
  calibration texts (dynamic_search.py, smoothquant.py, dynamic.py); projections that still
  hurt are left in float, and the export is refused when even that cannot hold the bar.

`quantize_model` (pipeline.py) takes the settings from `QuantOptions` (options.py) and the bar
from the one precision -> bar table (`qexport.export.bars`). Every export is checked
(check.py): the float graph and the quantized graph run on the check texts, the min cosine
goes into the manifest, and `verify_quantized` refuses the written artifact below the bar.
See docs/design.md, "Quantization".
"""

from __future__ import annotations

from ..bars import BARS, QUANT_PRECISIONS
from .calibration import CalibrationError
from .check import QuantizationRefused, Quantized, initializer_bytes, verify_quantized
from .options import QuantOptions, base_precision
from .pipeline import quantize_model
from .weight_only import MAX_WIDER_FRACTION

__all__ = [
    "BARS",
    "MAX_WIDER_FRACTION",
    "QUANT_PRECISIONS",
    "CalibrationError",
    "QuantOptions",
    "QuantizationRefused",
    "Quantized",
    "base_precision",
    "initializer_bytes",
    "quantize_model",
    "verify_quantized",
]
