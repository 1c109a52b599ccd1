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
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

if TYPE_CHECKING:
    import onnxruntime as ort

from ..manifest import ManifestError, RerankPrompt
from ..tasks import RERANK
from ..tasks import sigmoid as sigmoid
from ..templates import check_template
from .batching import DEFAULT_MAX_BATCH_TOKENS
from .core import RowRunner
from .graph_scan import check_token_ids, tokenizer_max_id
from .session import check_graph, open_artifact
from .tokenize import encode_bounded

GROUP = 64  # pairs tokenised together when counting against a token limit


class TokenLimitError(ValueError):
    """The pairs hold more tokens than allowed (counted before all of them were tokenised)."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the pairs have at least {tokens} tokens; at most {limit}")
        self.tokens, self.limit = tokens, limit


def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is {type(value).__name__}, not str")
    if not value:
        raise ValueError(f"{what} is an empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as UTF-8 ({exc.reason})") from None
    return value


def check_documents(documents: Any) -> list[str]:
    if isinstance(documents, str):
        raise ValueError("documents must be a list of strings, not a single string")
    try:
        docs = list(documents)
    except TypeError:
        raise ValueError(
            f"documents must be a list of strings, not {type(documents).__name__}"
        ) from None
    if not docs:
        raise ValueError("documents is empty: nothing to rerank")
    for i, d in enumerate(docs):
        _check_text(d, f"documents[{i}]")
    return docs


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
        query = _check_text(query, "query")
        docs = check_documents(documents)
        if instruction is not None:
            _check_text(instruction, "instruction")
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


class Reranker:
    """Rerank documents for a query with a qexport rerank artifact.

    >>> rr = Reranker("out")                                               # doctest: +SKIP
    >>> rr.rerank("capital of China?", ["Beijing is ...", "Basil ..."])   # doctest: +SKIP
    [(0, 0.97...), (1, 0.001...)]
    """

    def __init__(
        self,
        artifact: str | Path,
        device: str = "auto",
        *,
        threads: int | None = None,
        verify: bool = False,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        opened = open_artifact(
            artifact, "rerank", device, threads, verify, max_batch_tokens, session_options
        )
        self.path, self.manifest, self.session = opened.path, opened.manifest, opened.session
        m = self.manifest
        if m.rerank is None:  # manifest_checks requires it for task rerank; never assumed
            raise ManifestError(f"{str(self.path)!r}: a rerank artifact without its prompt")
        check_graph(self.session, m, RERANK)
        self.encoder = PairEncoder(self.path, m.rerank, m.max_length)
        self.pad_id = m.rerank.pad_id
        enc = self.encoder
        ids = [tokenizer_max_id(enc.tokenizer), self.pad_id, *enc.prefix, *enc.suffix]
        check_token_ids(opened.graph, max(ids), "the tokenizer or the manifest's prompt")
        self.core = RowRunner(
            self.session,
            RERANK.output,
            pad_id=self.pad_id,
            max_batch_tokens=max_batch_tokens,
            unit=RERANK.unit,
            precision=m.precision,
        )

    @property
    def max_batch_tokens(self) -> int:
        return self.core.max_batch_tokens

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

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


def check_top_n(top_n: Any) -> None:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")


def ranked(scores: np.ndarray, top_n: int | None) -> list[tuple[int, float]]:
    order = np.argsort(-scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    return [(int(i), float(scores[i])) for i in order]
