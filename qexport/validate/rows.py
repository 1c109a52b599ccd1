"""The speed grid's token rows, per task: real-sentence texts (embed) or one query with
real-sentence documents in the manifest's prompt (rerank) of about L tokens each, built once
with the artifact's own tokeniser (`Embedder.encoder` / `Reranker.encoder`), so that both
engines of `speed.py` run the very same rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# the grid's default lengths (tokens per row) per task: a Qwen3 reranker's pair with the card's
# prompt, default instruction and query holds ~80 tokens before its document
DEFAULT_LENGTHS = {"embed": (16, 128, 512), "rerank": (128, 256, 512)}
RERANK_QUERY = "What is the capital of China?"  # the rerank rows' query (the card's first)


def make_texts(
    count_tokens: Any, pool: list[str], length: int, n: int, offset: int = 0
) -> list[str]:
    """n different texts of at most `length` tokens (as close as whole words allow), cut from
    the running stream of the real sentences in `pool`. count_tokens(list[str]) -> list[int]."""
    words = " ".join(t for t in pool if t.strip()).split()
    if not words:
        raise ValueError("no words in the text pool")
    while len(words) < 4 * length + 64 * n:
        words = words + words
    out = []
    for j in range(n):
        start = (offset + 97 * j) % len(words)
        stream = words[start:] + words[:start]
        lo, hi = 1, min(len(stream), 4 * length)
        while lo < hi:  # the most words whose text fits in `length` tokens
            mid = (lo + hi + 1) // 2
            if count_tokens([" ".join(stream[:mid])])[0] <= length:
                lo = mid
            else:
                hi = mid - 1
        out.append(" ".join(stream[:lo]))
    return out


def _embed_rows(encoder: Any, pool: list[str], length: int, n: int, offset: int) -> list[list[int]]:
    """n texts of at most `length` tokens, tokenised by the artifact's `TextEncoder`."""

    def count(texts: list[str]) -> list[int]:
        return [len(r) for r in encoder.encode(texts, warn=False).ids]

    texts = make_texts(count, pool, length, n, offset)
    return [list(r) for r in encoder.encode(texts, warn=False).ids]


def _rerank_rows(
    encoder: Any, pool: list[str], length: int, n: int, offset: int
) -> list[list[int]]:
    """n (query, document) pairs of at most `length` tokens in the manifest's prompt, built by
    the artifact's `PairEncoder` (`Reranker.encoder`)."""

    def count(docs: list[str]) -> list[int]:
        return [len(r) for r in encoder.pairs(RERANK_QUERY, docs).ids]

    docs = make_texts(count, pool, length, n, offset)
    return [list(r) for r in encoder.pairs(RERANK_QUERY, docs).ids]


# task name -> (runtime encoder, text pool, length, rows, offset) -> token rows
ROWS: dict[str, Callable[..., list[list[int]]]] = {"embed": _embed_rows, "rerank": _rerank_rows}


def grid_cells(
    task: str,
    encoder: Any,
    pool: list[str],
    lengths: list[int],
    batch_sizes: list[int],
    max_length: int,
) -> tuple[list[int], list[dict[str, Any]], list[str]]:
    """(lengths actually run, grid cells with their token rows, notes)."""
    notes = []
    make = ROWS[task]
    floor = len(make(encoder, ["x"], 1, 1, 0)[0])  # the shortest row the task can have
    if min(lengths) < floor:
        notes.append(f"lengths below {floor} tokens (the shortest {task} row) were run at {floor}")
    if max(lengths) > max_length:
        notes.append(
            f"lengths above the artifact's max length {max_length} were run at {max_length}"
        )
    lengths = sorted({min(max(n, floor), max_length) for n in lengths})
    cells: list[dict[str, Any]] = []
    for length in lengths:
        rows_all = make(encoder, pool, length, max(batch_sizes), length)
        for i, b in enumerate(batch_sizes):
            rows = rows_all[:b]
            cells.append(
                {
                    "batch_size": b,
                    "length": length,
                    "rows": rows,
                    "tokens": int(sum(len(r) for r in rows)),
                    "first_of_length": i == 0,
                }
            )
    return lengths, cells, notes
