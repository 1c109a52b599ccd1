"""Reranker: score (query, document) pairs with a qexport rerank artifact (task "rerank").

The prompt comes from the manifest, never from code: `prefix_ids + body_ids + suffix_ids`
with body = `template.format(instruction=, query=, doc=)`, the body cut to
`max_length - len(prefix) - len(suffix)` tokens from its end (as the model card's
`tokenizer(..., truncation='longest_first', max_length=...)` does) so the suffix always
survives. Rows run through the runtime's one row loop (`core.RowRunner`: token-budget
batches, right padding with the manifest's pad id, NaN/Inf checked); the graph returns one
logit per pair, and the task's post-processing (`tasks.RERANK`) gives
`score = sigmoid(logit) = softmax([no, yes])[yes]`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import ManifestError, RerankPrompt
from ..tasks import RERANK, check_top_n, ranked
from .model import TaskModel
from .session import Opened
from .tokenize import Encoded, TextEncoder, check_text, text_list

PAIR_FIELDS = ("instruction", "query", "doc")


class PairEncoder(TextEncoder):
    """The manifest's prompt around each (query, document) pair: the runtime's `TextEncoder`
    with the prompt's prefix and suffix ids and its body template."""

    def __init__(self, folder: Path, rerank: RerankPrompt, max_length: int) -> None:
        prompt = ([int(i) for i in rerank.prefix_ids], [int(i) for i in rerank.suffix_ids])
        super().__init__(
            folder,
            max_length,
            rerank.template,
            fields=PAIR_FIELDS,
            template_name="rerank.template",
            prompt=prompt,
        )
        for key, ids in zip(("prefix", "suffix"), prompt, strict=True):
            got = self.tokenizer.encode(getattr(rerank, key), add_special_tokens=False).ids
            if got != ids:
                raise ManifestError(
                    f"the tokenizer encodes the manifest's {key} as {got}, not {ids}"
                )
        self.default_instruction: str = rerank.default_instruction

    def pairs(
        self,
        query: Any,
        documents: Any,
        instruction: Any = None,
        *,
        max_tokens: int | None = None,
    ) -> Encoded:
        """Validate, format and tokenise (no warning): a row per document; with `max_tokens`
        counting stops at the first group of pairs past it (`TokenLimitError`)."""
        bodies = self.bodies(query, documents, instruction)
        return self.encode(bodies, warn=False, max_tokens=max_tokens, name="documents")

    def bodies(self, query: Any, documents: Any, instruction: Any = None) -> list[str]:
        """The template filled per document (the card's `format_instruction`), checked."""
        query = check_text(query, "query", empty=False)
        docs = text_list(documents, "documents", "rerank", empty=False)
        if instruction is None:
            instruction = self.default_instruction
        check_text(instruction, "instruction")
        assert self.template is not None
        return [self.template.format(instruction=instruction, query=query, doc=d) for d in docs]


class Reranker(TaskModel):
    """Rerank documents for a query with a qexport rerank artifact.

    >>> rr = Reranker("out")                                               # doctest: +SKIP
    >>> rr.rerank("capital of China?", ["Beijing is ...", "Basil ..."])   # doctest: +SKIP
    [(0, 0.97...), (1, 0.001...)]
    """

    task = RERANK
    encoder: PairEncoder

    def _encoder(self, opened: Opened) -> PairEncoder:
        m = opened.manifest
        if m.rerank is None:  # manifest_checks requires it for task rerank; never assumed
            raise ManifestError(f"{str(opened.path)!r}: a rerank artifact without its prompt")
        return PairEncoder(opened.path, m.rerank, m.max_length)

    def _prompt_ids(self) -> list[int]:
        return [self._pad_id(), *self.encoder.prefix, *self.encoder.suffix]

    def _pad_id(self) -> int:
        assert self.manifest.rerank is not None
        return self.manifest.rerank.pad_id

    @property
    def pad_id(self) -> int:
        return self._pad_id()

    @property
    def default_instruction(self) -> str:
        return self.encoder.default_instruction

    def logits_for_ids(self, rows: list[list[int]], batch_size: int = 32) -> np.ndarray:
        """log-odds (logit(yes) - logit(no)) per tokenised pair, in input order."""
        return self.core.run(rows, batch_size=batch_size)

    def logits(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        enc = self.encoder.pairs(query, documents, instruction)
        if enc.truncated:
            warnings.warn(
                f"{enc.truncated} pair(s) longer than max_length {self.encoder.max_length} had "
                "their document truncated (the prompt's suffix is kept)",
                stacklevel=3,
            )
        return self.logits_for_ids(enc.ids, batch_size)

    def score(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Relevance probabilities (float32, in input order): P(yes) = sigmoid(log-odds)."""
        return RERANK.postprocess(self.logits(query, documents, instruction, batch_size=batch_size))

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        instruction: str | None = None,
        *,
        batch_size: int = 32,
    ) -> list[tuple[int, float]]:
        """(document index, probability), best first (ties: lower index first)."""
        check_top_n(top_n)
        scores = self.score(query, documents, instruction, batch_size=batch_size)
        return ranked(scores, top_n)
