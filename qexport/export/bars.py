"""The fidelity bar of each task and precision.

Embeddings (task `embed`, metric cosine): `BARS`, the lowest per-text cosine an artifact may
have. One table, read by quantization (the check texts against the float graph: a quantized export
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


# Rerankers (task `rerank`, metric log-odds): the largest |log-odds difference| of any pair and
# the lowest mean top-3 overlap per query, per precision. Read by the int8 export check (the
# written int8 graph against the float graph it came from; refused past the bar) and by
# `qexport validate`'s defaults (against the model card's transformers recipe). The int8 values
# are set against the measured drift (0.096-0.164 log-odds from 1 to 28 layers of the 0.6B
# width; docs/design.md, "Reranker").
LOGODDS_BARS: dict[str, float] = {"fp32": 1e-3, "fp16": 0.05, "bf16": 0.3, "int8": 0.3}
TOP3_OVERLAP_BARS: dict[str, float] = {"fp32": 0.95, "fp16": 0.9, "bf16": 0.8, "int8": 2 / 3}
# the bars of each task, by its metric's keys (tasks.Task.metric)
TASK_BARS: dict[str, dict[str, dict[str, float]]] = {
    "embed": {"cosine_min": BARS},
    "rerank": {"logodds_max_diff": LOGODDS_BARS, "top3_overlap_min": TOP3_OVERLAP_BARS},
}
