"""The fidelity bar of each precision: the lowest per-text cosine an artifact may have.

One table, read by quantization (the check texts against the float graph: a quantized export
below its bar is refused), by `qexport validate`'s default thresholds (against the PyTorch
reference) and by the help of `qexport onnx --min-cosine`. It imports nothing, so the CLI
reads it without loading onnx.
"""

from __future__ import annotations

QUANT_PRECISIONS = ("int8", "int4", "int8-dynamic")

BARS: dict[str, float] = {
    "fp32": 0.9999,
    "fp16": 0.999,
    "bf16": 0.99,
    "int8": 0.995,
    "int4": 0.98,
    "int8-dynamic": 0.99,
}


def bars_text(precisions: tuple[str, ...] = QUANT_PRECISIONS) -> str:
    """'0.995 int8, 0.98 int4, 0.99 int8-dynamic': the bars for a help text."""
    return ", ".join(f"{BARS[p]} {p}" for p in precisions)
