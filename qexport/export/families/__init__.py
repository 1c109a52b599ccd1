"""Model families: one frozen `FamilySpec` per family (`SPECS`), looked up by config
`model_type`. `FAMILIES` maps a family name to its graph builder."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from .bert import BertBuilder
from .gemma3 import Gemma3Builder
from .qwen3 import QWEN3_DIMS, QWEN3_QUERY_TASK, QWEN3_TEMPLATE, Qwen3Builder
from .spec import FamilySpec
from .xlm_roberta import XLMRobertaBuilder, whitespace_split

SPECS: dict[str, FamilySpec] = {
    s.name: s
    for s in (
        FamilySpec(
            name="qwen3",
            builder=Qwen3Builder,
            model_types=Qwen3Builder.model_types,
            strip_prefixes=Qwen3Builder.strip_prefixes,
            default_head=("lasttoken", True),
            instruction_template=QWEN3_TEMPLATE,
            default_instruction=QWEN3_QUERY_TASK,
            default_prompts=MappingProxyType(
                {"query": f"Instruct: {QWEN3_QUERY_TASK}\nQuery:", "document": ""}
            ),
            matryoshka_dims=QWEN3_DIMS,
        ),
        FamilySpec(
            name="bert",
            builder=BertBuilder,
            model_types=BertBuilder.model_types,
            strip_prefixes=BertBuilder.strip_prefixes,
        ),
        FamilySpec(
            name="xlm-roberta",
            builder=XLMRobertaBuilder,
            model_types=XLMRobertaBuilder.model_types,
            strip_prefixes=XLMRobertaBuilder.strip_prefixes,
            tokenizer_patch=whitespace_split,
        ),
        FamilySpec(
            name="gemma3",
            builder=Gemma3Builder,
            model_types=Gemma3Builder.model_types,
            strip_prefixes=Gemma3Builder.strip_prefixes,
            # sentence-transformers prepends a prompt to the text; `instruction` is that prompt
            instruction_template="{instruction}{text}",
            instruction_prompt="query",
            matryoshka_dims=(128, 256, 512, 768),
        ),
    )
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
