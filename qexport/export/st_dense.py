"""sentence-transformers `Dense` modules (e.g. EmbeddingGemma's 768 -> 3072 -> 768 projections)
read from their folder and emitted into the graph head, after pooling and before Normalize,
so only [batch, dim] leaves the graph."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from .graph import GraphBuilder

# sentence-transformers' activation_function (a class path) -> the ONNX op, None = identity
ACTIVATIONS: dict[str, str | None] = {
    "torch.nn.modules.linear.Identity": None,
    "torch.nn.modules.activation.Tanh": "Tanh",
}
DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"  # Dense's own default
# the weights file, first found wins: safetensors (sentence-transformers >= 3.0), torch (2.x)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class DenseError(ValueError):
    """A Dense module qexport cannot reproduce exactly."""


@dataclass(frozen=True)
class DenseLayer:
    folder: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str | None  # ONNX op name, None = identity
    weights: str = WEIGHT_FILES[0]

    def load(self, name: str) -> np.ndarray:
        if self.weights.endswith(".bin"):
            tensors = _torch_tensors(self.folder / self.weights)
            if name not in tensors:
                raise DenseError(f"{self.folder}/{self.weights} has no {name!r}")
            return tensors[name]
        from safetensors import safe_open

        with safe_open(str(self.folder / self.weights), framework="numpy") as f:
            if name not in f.keys():
                raise DenseError(f"{self.folder}/{self.weights} has no {name!r}")
            return f.get_tensor(name)


def _torch_tensors(path: Path) -> dict[str, np.ndarray]:
    """A 2.x Dense's pytorch_model.bin (a torch pickle: only torch reads it, tensors only)."""
    try:
        import torch
    except ImportError as exc:
        raise DenseError(
            f"{path} is a PyTorch pickle and torch is not installed: install torch or save "
            "the Dense layer as model.safetensors"
        ) from exc
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def read_dense(folder: Path) -> DenseLayer:
    try:
        cfg: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DenseError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    act_name = cfg.get("activation_function", DEFAULT_ACTIVATION)
    if act_name not in ACTIVATIONS:
        raise DenseError(
            f"Dense activation {act_name!r} ({folder.name}) is not supported; supported: "
            + ", ".join(ACTIVATIONS)
        )
    if cfg.get("use_residual"):
        raise DenseError(f"Dense with use_residual=true ({folder.name}) is not supported")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, "sentence_embedding") != "sentence_embedding":
            raise DenseError(f"Dense {key}={cfg[key]!r} ({folder.name}) is not supported")
    weights = next((f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise DenseError(f"{folder} has no Dense weights ({' or '.join(WEIGHT_FILES)})")
    return DenseLayer(
        folder=folder,
        in_features=int(cfg["in_features"]),
        out_features=int(cfg["out_features"]),
        bias=bool(cfg.get("bias", True)),
        activation=ACTIVATIONS[act_name],
        weights=weights,
    )


def check_chain(layers: list[DenseLayer], hidden: int) -> int:
    """The width after the chain; each layer's in_features must match what comes in."""
    width = hidden
    for layer in layers:
        if layer.in_features != width:
            raise DenseError(
                f"Dense {layer.folder.name} expects {layer.in_features} inputs but receives {width}"
            )
        width = layer.out_features
    return width


def apply_dense(g: GraphBuilder, x: ir.Value, layers: list[DenseLayer]) -> ir.Value:
    """x [B, in] fp32 -> activation(x @ W.T + b) per layer, fp32 (the head is small)."""
    f32 = np.dtype(np.float32)
    for i, layer in enumerate(layers):
        shape = (layer.in_features, layer.out_features)
        w = g.weight(f"head.dense_{i}.weight", shape, f32, functools.partial(_transposed, layer))
        x = g.op("MatMul", x, w)
        if layer.bias:
            b = g.weight(
                f"head.dense_{i}.bias", (layer.out_features,), f32,
                functools.partial(layer.load, "linear.bias"),
            )  # fmt: skip
            x = g.op("Add", x, b)
        if layer.activation is not None:
            x = g.op(layer.activation, x)
    return x


def _transposed(layer: DenseLayer) -> np.ndarray:
    return layer.load("linear.weight").T  # nn.Linear [out, in] -> MatMul operand [in, out]
