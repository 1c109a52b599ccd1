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
from tokenizers import Tokenizer

from ..manifest import ManifestError, RerankPrompt
from ..tasks import RERANK, check_top_n, ranked
from ..templates import check_template
from .model import TaskModel
from .session import Opened
from .tokenize import TokenLimitError, check_text, encode_bounded, text_list

GROUP = 64  # pairs tokenised together when counting against a token limit


class PairEncoder:
    """The manifest's prompt around each (query, document) pair, tokenised with `tokenizers`."""

    def __init__(self, folder: Path, rerank: RerankPrompt, max_length: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.prefix = [int(i) for i in rerank.prefix_ids]
        self.suffix = [int(i) for i in rerank.suffix_ids]
        for key, ids in (("prefix", self.prefix), ("suffix", self.suffix)):
            got = self.tokenizer.encode(getattr(rerank, key), add_special_tokens=False).ids
            if got != ids:
                raise ManifestError(
                    f"the tokenizer encodes the manifest's {key} as {got}, not {ids}"
                )
        self.template: str = check_template(
            rerank.template, ("instruction", "query", "doc"), "rerank.template"
        )
        self.default_instruction: str = rerank.default_instruction
        self.max_length = max_length
        self.body_budget = max_length - len(self.prefix) - len(self.suffix)
        if self.body_budget < 1:
            raise ManifestError(f"max_length {max_length} leaves no room between prefix and suffix")

    def bodies(self, query: str, documents: Sequence[str], instruction: str | None) -> list[str]:
        task = self.default_instruction if instruction is None else instruction
        return [self.template.format(instruction=task, query=query, doc=d) for d in documents]

    def _group_ids(self, bodies: list[str]) -> list[list[int]]:
        encs = encode_bounded(self.tokenizer, bodies, self.body_budget, special=False)
        return [list(e.ids) for e in encs]

    def encode(
        self,
        query: Any,
        documents: Any,
        instruction: Any = None,
        *,
        max_tokens: int | None = None,
    ) -> tuple[list[list[int]], int]:
        """Validate, format and tokenise: (token ids per pair, number of bodies truncated).

        Memory stays bounded: a long document is tokenised only as far as its pair can hold,
        and with `max_tokens` pairs are tokenised in groups and counting stops at the first
        group that passes the limit (`TokenLimitError`)."""
        query = check_text(query, "query", empty=False)
        docs = text_list(documents, "documents", "rerank", empty=False)
        if instruction is not None:
            check_text(instruction, "instruction")
        bodies = self.bodies(query, docs, instruction)
        rows: list[list[int]] = []
        truncated = total = 0
        for start in range(0, len(bodies), GROUP):
            for body in self._group_ids(bodies[start : start + GROUP]):
                if len(body) > self.body_budget:
                    body = body[: self.body_budget]
                    truncated += 1
                rows.append(self.prefix + body + self.suffix)
                total += len(rows[-1])
            if max_tokens is not None and total > max_tokens:
                raise TokenLimitError(total, max_tokens)
        return rows, truncated


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
        rows, truncated = self.encoder.encode(query, documents, instruction)
        if truncated:
            warnings.warn(
                f"{truncated} pair(s) longer than max_length {self.encoder.max_length} had "
                "their document truncated (the prompt's suffix is kept)",
                stacklevel=3,
            )
        return self.logits_for_ids(rows, batch_size)

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
