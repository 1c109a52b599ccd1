"""The PyTorch reference an artifact is compared with (the bars per precision live in
`qexport/export/bars.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import load_manifest
from .reference import TorchReference


def load_reference(
    reference: str, artifact: str | Path, device: str = "cpu"
) -> tuple[Any, str, str | None]:
    """The PyTorch reference for `artifact`: same tokenizer (the artifact's), same number of
    layers, same max length. Returns (reference, device it runs on, note)."""
    manifest = load_manifest(artifact)
    kwargs: dict[str, Any] = dict(
        tokenizer=artifact,  # the artifact carries the tokenizer it was exported with
        layers=manifest.architecture.get("layers_exported"),
        max_length=manifest.max_length,
    )
    note = None
    ref_device = "cpu"
    if device in ("cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            kwargs["device"] = "cuda"
            ref_device = "cuda"
        elif device == "cuda":
            note = "the PyTorch reference ran on CPU (torch has no CUDA here)"
    return TorchReference(reference, **kwargs), ref_device, note
