"""A frozen, declarative description of each model family: what the rest of the code needs to
know about it (builder, model types, weight-name prefixes, the head it uses when the checkpoint
ships none, instruction prompts, Matryoshka sizes, the PyTorch reference recipe, which
checkpoints export as a reranker)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# The PyTorch reference validate/ compares an export with (`FamilySpec.reference`):
# the checkpoint's own sentence-transformers pipeline, as published;
ST_PIPELINE = "sentence-transformers"
# or the Qwen3-Embedding model card's recipe: transformers' AutoModel from config.json, left
# padding, last_token_pool, L2 normalise.
LAST_TOKEN_CARD = "last-token-card"


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
    instruction_prompt: str | None = None  # default instruction: this prompt of the checkpoint
    # prompts set when the checkpoint's config_sentence_transformers.json lacks them
    default_prompts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    matryoshka_dims: tuple[int, ...] = ()  # empty: the full width only
    # rewrites the artifact's tokenizer.json (as a dict) where the checkpoint's file and the
    # reference tokenizer (transformers' class for the family) disagree
    tokenizer_patch: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    reference: str = ST_PIPELINE  # or LAST_TOKEN_CARD
    # config `architectures` of the checkpoints --task rerank exports; empty: no reranker
    rerank_architectures: tuple[str, ...] = ()
    # int8-dynamic's per-token activation scales (QuantOptions.per_token) when the export names
    # none; None: the quantizer's default (per token on every projection)
    int8_dynamic_per_token: str | None = None

    def allowed_dims(self, hidden: int) -> list[int]:
        return sorted({d for d in self.matryoshka_dims if d <= hidden} | {hidden})

    def exports_reranker(self, config: Mapping[str, Any]) -> bool:
        """Whether --task rerank can export this checkpoint (one whose config names no
        architecture is taken as the family's reranker)."""
        arch = (config.get("architectures") or [None])[0]
        return bool(self.rerank_architectures) and arch in (*self.rerank_architectures, None)

    def max_positions(self, config: Mapping[str, Any]) -> int:
        """The longest input the position embeddings allow (the builder's own rule)."""
        rule = getattr(self.builder, "usable_positions", None)
        if rule is not None:
            return int(rule(config))
        return int(config.get("max_position_embeddings", 512))

    def patch_tokenizer(self, path: Path) -> None:
        if self.tokenizer_patch is None or not path.is_file():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(
            json.dumps(self.tokenizer_patch(data), ensure_ascii=False), encoding="utf-8"
        )
