"""Model families: one frozen `FamilySpec` per family (`SPECS`, each defined beside its graph
builder), looked up by config `model_type`. `FAMILIES` maps a family name to its builder."""

from __future__ import annotations

from typing import Any

from . import bert, gemma3, qwen3, xlm_roberta
from .spec import FamilySpec

SPECS: dict[str, FamilySpec] = {
    s.name: s for s in (qwen3.SPEC, bert.SPEC, xlm_roberta.SPEC, gemma3.SPEC)
}
FAMILIES: dict[str, Any] = {name: s.builder for name, s in SPECS.items()}


class UnsupportedModelError(ValueError):
    """The model's architecture or head is not one qexport can export faithfully."""


def family_for(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    for name, spec in SPECS.items():
        if model_type in spec.model_types:
            return name
    archs = ", ".join(config.get("architectures") or []) or "?"
    raise UnsupportedModelError(
        f"model_type {model_type!r} ({archs}) is not supported; supported: "
        + ", ".join(sorted(t for s in SPECS.values() for t in s.model_types))
    )
