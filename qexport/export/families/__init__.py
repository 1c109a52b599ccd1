"""Model families: a declarative registry from config `model_type` to a graph builder."""

from __future__ import annotations

from typing import Any

from .bert import BertBuilder
from .qwen3 import Qwen3Builder

FAMILIES: dict[str, Any] = {"qwen3": Qwen3Builder, "bert": BertBuilder}
DEFAULT_POOLING = {"qwen3": ("lasttoken", True)}


class UnsupportedModelError(ValueError):
    """The model's architecture or head is not one qexport can export faithfully."""


def family_for(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    for name, builder in FAMILIES.items():
        if model_type in builder.model_types:
            return name
    archs = ", ".join(config.get("architectures") or []) or "?"
    raise UnsupportedModelError(
        f"model_type {model_type!r} ({archs}) is not supported; supported: "
        + ", ".join(sorted(t for b in FAMILIES.values() for t in b.model_types))
    )
