"""Token-budget batching: sort by length, pack rows while rows x longest <= the budget.

Padding waste stays small because every batch holds rows of similar length, and the batch
size adapts to the length: many short texts per batch, few long ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_MAX_BATCH_TOKENS = 16384  # on CUDA, and for callers that plan without a session
# On CPU smaller passes are faster and far lighter: all-MiniLM-L6-v2 on 400 mixed texts 47.2 vs
# 45.8 texts/s and 66 vs 586 MiB peak at 4,096 vs 16,384; Qwen3-Reranker-0.6B widths (1
# layer, 128 SciFact pairs of ~486 tokens) 14.0 vs 11.4 pairs/s (docs/benchmarks.md)
CPU_MAX_BATCH_TOKENS = 4096


def default_max_batch_tokens(on_cuda: bool) -> int:
    """The padded tokens per forward pass a runtime uses when the caller names none."""
    return DEFAULT_MAX_BATCH_TOKENS if on_cuda else CPU_MAX_BATCH_TOKENS


# A batch closes early when its padding would pass this fraction of its padded size, so a
# large budget does not sweep many short rows into one wide batch (measured on 400 mixed
# SciFact texts: budget 16,384 padded 1.47x without it).
MAX_PADDING_FRACTION = 0.2


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_rows: int = 1 << 30,
    max_padding: float = MAX_PADDING_FRACTION,
) -> list[np.ndarray]:
    """Split row indices into batches, longest first, so that each batch's padded size
    (rows x longest row) is at most `max_batch_tokens`, it has at most `max_rows` rows, and
    padding is at most `max_padding` of its padded size.

    A row longer than the budget gets a batch of its own. Every index appears exactly once.
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    if max_rows < 1:
        raise ValueError(f"batch_size must be >= 1, got {max_rows}")
    lens = np.asarray(lengths, dtype=np.int64)
    # longest first: the most memory-hungry batch runs first (fail fast), and within a batch
    # the first row sets the padded width
    order = np.argsort(-lens, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        width = max(int(lens[order[start]]), 1)
        rows = max(1, min(max_rows, max_batch_tokens // width, n - start))
        # rows are sorted descending: padding grows with each row added; cut where the
        # running real/padded ratio drops below 1 - max_padding
        real = np.cumsum(np.maximum(lens[order[start : start + rows]], 1))
        padded = width * np.arange(1, rows + 1)
        ok = np.flatnonzero(real >= (1.0 - max_padding) * padded)
        rows = int(ok[-1]) + 1 if len(ok) else 1
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padding_ratio(lengths: Sequence[int], batches: Sequence[np.ndarray]) -> float:
    """Padded tokens / real tokens (1.0 = no padding) for a batch plan."""
    lens = np.asarray(lengths, dtype=np.int64)
    padded = sum(len(b) * int(lens[b].max()) for b in batches if len(b))
    real = int(lens.sum())
    return padded / max(real, 1)
