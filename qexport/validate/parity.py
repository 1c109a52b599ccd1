"""The PyTorch reference an artifact is compared with (the bars per precision live in
`qexport/export/bars.py`), and the device it runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import load_manifest
from .reference import TorchReference


def torch_device(device: str) -> tuple[str, str | None]:
    """Where the PyTorch reference runs for a requested `device` ("cpu", "cuda", "auto"):
    CUDA when asked for (or "auto") and torch has it. Returns (device, note)."""
    if device not in ("cuda", "auto"):
        return "cpu", None
    import torch

    if torch.cuda.is_available():
        return "cuda", None
    note = "the PyTorch reference ran on CPU (torch has no CUDA here)" if device == "cuda" else None
    return "cpu", note


def load_reference(
    reference: str, artifact: str | Path, device: str = "cpu"
) -> tuple[Any, str, str | None]:
    """The PyTorch reference for `artifact`: same tokenizer (the artifact's), same number of
    layers, same max length. Returns (reference, device it runs on, note)."""
    manifest = load_manifest(artifact)
    ref_device, note = torch_device(device)
    ref = TorchReference(
        reference,
        tokenizer=artifact,  # the artifact carries the tokenizer it was exported with
        layers=manifest.architecture.get("layers_exported"),
        max_length=manifest.max_length,
        device=ref_device,
    )
    return ref, ref_device, note
