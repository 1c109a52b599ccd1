"""FLOPs per token of an artifact's graph and the peak FLOP/s of known GPUs: the speed
harness's MFU (model FLOPs utilisation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Dense peak FLOP/s by GPU name (tensor cores for 16-bit; fp32 without TF32)
GPU_PEAK_FLOPS = {
    "H200": {"fp16": 989e12, "bf16": 989e12, "fp32": 67e12},
    "H100": {"fp16": 989e12, "bf16": 989e12, "fp32": 67e12},
    "A100": {"fp16": 312e12, "bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"fp16": 362e12, "bf16": 362e12, "fp32": 91.6e12},
    "L4": {"fp16": 121e12, "bf16": 121e12, "fp32": 30.3e12},
}


def matmul_flops_per_token(graph: Path) -> float:
    """2 x the weights of every MatMul/Gemm/MatMulNBits with a constant weight (FLOPs of the
    dense layers per token)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            total += attrs.get("K", 0) * attrs.get("N", 0)
        elif node.op_type in ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul"):
            if len(node.input) > 1 and node.input[1] in inits:
                total += int(np.prod(inits[node.input[1]]))
    return 2.0 * total


def flops_per_token(dense: float, architecture: dict[str, Any], length: int) -> float:
    """Dense layers plus attention scores and values: 4 x L x (heads x head_dim) per layer."""
    layers = architecture.get("layers_exported", architecture.get("num_hidden_layers", 0))
    heads = architecture.get("num_attention_heads", 0)
    head_dim = architecture.get("head_dim") or (architecture.get("hidden_size", 0) // max(heads, 1))
    return dense + 4.0 * length * heads * head_dim * layers


def gpu_peak_flops(gpu_name: str | None, precision: str) -> float | None:
    if not gpu_name:
        return None
    for key, peaks in GPU_PEAK_FLOPS.items():
        if key in gpu_name:
            return peaks.get("fp32" if precision == "fp32" else "fp16")
    return None
