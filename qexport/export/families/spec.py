"""A frozen, declarative description of each model family: what the rest of the export code
needs to know about it (builder, model types, weight-name prefixes, the head it uses when the
checkpoint ships none, instruction prompts, Matryoshka sizes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class FamilySpec:
    name: str
    builder: type  # a FamilyBuilder subclass
    model_types: tuple[str, ...]
    strip_prefixes: tuple[str, ...] = ()
    # (pooling, normalize) when the folder has no sentence-transformers modules.json
    default_head: tuple[str, bool] | None = None
    instruction_template: str | None = None  # "{instruction}" and "{text}" placeholders
    default_instruction: str | None = None
    # prompts set when the checkpoint's config_sentence_transformers.json lacks them
    default_prompts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    matryoshka_dims: tuple[int, ...] = ()  # empty: the full width only

    def allowed_dims(self, hidden: int) -> list[int]:
        return sorted({d for d in self.matryoshka_dims if d <= hidden} | {hidden})

    def max_positions(self, config: Mapping[str, Any]) -> int:
        """The longest input the position embeddings allow (the builder's own rule)."""
        rule = getattr(self.builder, "usable_positions", None)
        if rule is not None:
            return int(rule(config))
        return int(config.get("max_position_embeddings", 512))
