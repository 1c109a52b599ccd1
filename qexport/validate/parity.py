"""Minimal parity check: per-text cosine of the artifact against the PyTorch reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import load_manifest
from ..runtime import Embedder
from ..texts import BUILTIN_TEXTS
from .reference import TorchReference

DEFAULT_THRESHOLDS = {
    "fp32": 0.9999,
    "fp16": 0.999,
    "bf16": 0.99,
    "int8": 0.995,
    "int4": 0.98,
    "int8-dynamic": 0.99,
}


@dataclass
class ParityResult:
    texts: list[str]
    cosines: np.ndarray
    precision: str
    providers: list[str]


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


def check_parity(
    artifact: str | Path, reference: str, *, texts: list[str] | None = None, device: str = "cpu"
) -> ParityResult:
    artifact = Path(artifact)
    manifest = load_manifest(artifact, verify=True)
    texts = list(texts or BUILTIN_TEXTS)
    emb = Embedder(artifact, device=device)
    ours = emb.embed(texts)
    ref, _, _ = load_reference(reference, artifact, "cpu")
    theirs = ref.embed(texts)
    cos = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    return ParityResult(texts, cos, manifest.precision, emb.providers)
