"""Fidelity of an artifact against its PyTorch reference, text by text.

Every function takes the artifact's `Embedder` and the reference (anything with
`embed(texts, instruction=None, batch_size=8) -> np.ndarray`, i.e. `TorchReference`) and
returns plain dicts of metrics (json-ready); thresholds are applied by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from ..export.families.qwen3 import QWEN3_QUERY_TASK
from ..runtime import Embedder
from ..util import renormalise, row_cosines  # importable from here too
from .retrieval import model_key

T = TypeVar("T")

# The model card example of Qwen/Qwen3-Embedding-0.6B and its published score matrix
# (queries x documents, real weights, fp32): ../shared/qwen3-embedding/README.md. Its task is
# the family's default instruction.
CARD_TASK = QWEN3_QUERY_TASK
CARD_QUERIES = ["What is the capital of China?", "Explain gravity"]
CARD_DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical "
    "objects and is responsible for the movement of planets around the sun.",
]
CARD_SCORES = {"qwen3-embedding-0.6b": [[0.7645568, 0.1414251], [0.1354974, 0.5999550]]}


class Reference(Protocol):
    def embed(
        self, texts: list[str], *, instruction: str | None = None, batch_size: int = 8
    ) -> np.ndarray: ...


def _stats(cos: np.ndarray) -> dict[str, float]:
    return {
        "cosine_min": float(cos.min()),
        "cosine_p1": float(np.percentile(cos, 1)),
        "cosine_mean": float(cos.mean()),
    }


def rows_or_nan(
    run: Callable[[list[T]], np.ndarray], items: list[T], row_shape: tuple[int, ...]
) -> tuple[np.ndarray, list[int]]:
    """`run(items)`; where the runtime reports NaN/Inf, run the items one by one and leave the
    rows of those that are not finite themselves NaN. Returns (rows, indices of non-finite
    items). For texts to embed and documents to rerank alike."""
    try:
        return run(items), []
    except FloatingPointError:
        pass
    out = np.full((len(items), *row_shape), np.nan, dtype=np.float32)
    bad = []
    for i, item in enumerate(items):
        try:
            out[i] = run([item])[0]
        except FloatingPointError:
            bad.append(i)
    return out, bad


def embed_checked(emb: Embedder, texts: list[str], **kw: Any) -> tuple[np.ndarray, list[int]]:
    """Embed, non-finite texts found one by one and left NaN (`rows_or_nan`)."""
    return rows_or_nan(lambda t: emb.embed(t, **kw), texts, (kw.get("dim") or emb.dim,))


def token_counts(emb: Embedder, texts: list[str]) -> list[int]:
    return [len(r) for r in emb.encoder.encode(texts, warn=False).ids]


def per_text(
    emb: Embedder, ours: np.ndarray, theirs: np.ndarray, texts: list[str]
) -> dict[str, Any]:
    """Per-text cosine (min, 1st percentile, mean), max abs diff, NaN/Inf, the worst texts."""
    finite = np.isfinite(ours).all(axis=1)
    cos = np.where(finite, row_cosines(np.nan_to_num(ours), theirs), np.nan)
    ok = cos[finite]
    diff = np.abs(ours[finite] - theirs[finite])
    tokens = token_counts(emb, texts)
    order = sorted(range(len(texts)), key=lambda i: (finite[i], cos[i] if finite[i] else 0))
    worst = [
        {
            "index": i,
            "cosine": None if not finite[i] else float(cos[i]),
            "max_abs_diff": None if not finite[i] else float(np.abs(ours[i] - theirs[i]).max()),
            "tokens": tokens[i],
            "text": texts[i][:120],
        }
        for i in order[:5]
    ]
    return {
        "texts": len(texts),
        **(_stats(ok) if ok.size else {"cosine_min": None, "cosine_p1": None, "cosine_mean": None}),
        "max_abs_diff": float(diff.max()) if diff.size else None,
        "nonfinite": int((~finite).sum()),
        "nonfinite_indices": [int(i) for i in np.flatnonzero(~finite)],
        "cosines": [None if np.isnan(c) else float(c) for c in cos],
        "tokens": tokens,
        "worst": worst,
    }


def batch_vs_single(emb: Embedder, texts: list[str], batch_size: int = 8) -> dict[str, Any]:
    """The same texts batched (length-sorted batches, as the runtime does) and one at a time."""
    batched = emb.embed(texts, batch_size=batch_size)
    single = emb.embed(texts, batch_size=1)
    cos = row_cosines(batched, single)
    worst = int(cos.argmin())
    return {
        "batch_size": batch_size,
        "cosine_min": float(cos.min()),
        "max_abs_diff": float(np.abs(batched - single).max()),
        "worst_index": worst,
        "worst_text": texts[worst][:120],
    }


def padding_invariance(emb: Embedder, texts: list[str], k: int = 8) -> dict[str, Any]:
    """The k shortest texts in one batch with the longest text (so padded to its length)
    against each embedded alone."""
    tokens = token_counts(emb, texts)
    order = np.argsort(tokens, kind="stable")
    shorts = [texts[i] for i in order[:k]]
    longest = texts[int(order[-1])]
    padded = emb.embed([*shorts, longest], batch_size=len(shorts) + 1)[:-1]
    alone = emb.embed(shorts, batch_size=1)
    cos = row_cosines(padded, alone)
    worst = int(cos.argmin())
    return {
        "texts": len(shorts),
        "padded_to_tokens": int(tokens[int(order[-1])]),
        "cosine_min": float(cos.min()),
        "max_abs_diff": float(np.abs(padded - alone).max()),
        "worst_text": shorts[worst][:120],
    }


def matryoshka(emb: Embedder, theirs: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Every allowed size below the full one: the runtime's `dim=` path against the reference
    sliced and renormalised."""
    dims = [d for d in emb.manifest.allowed_dims if d < emb.dim]
    per_dim = {}
    for d in dims:
        ours = emb.embed(texts, dim=d)
        cos = row_cosines(ours, renormalise(theirs[:, :d]))
        per_dim[str(d)] = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    worst = min(per_dim.items(), key=lambda kv: kv[1]["cosine_min"]) if per_dim else None
    return {
        "dims": per_dim,
        "cosine_min": worst[1]["cosine_min"] if worst else None,
        "worst_dim": int(worst[0]) if worst else None,
    }


def instruction_path(
    emb: Embedder, ref: Reference, texts: list[str], instruction: str | None = None
) -> dict[str, Any]:
    """Queries with the instruction template, artifact vs reference; and the instruction must
    change the vector (otherwise the template is not applied)."""
    template = emb.manifest.instruction_template
    if template is None:
        return {"skipped": "the model has no instruction template"}
    instruction = instruction or emb.default_instruction or "Retrieve relevant passages"
    ours = emb.embed(texts, instruction=instruction)
    theirs = ref.embed(texts, instruction=instruction)
    cos = row_cosines(ours, theirs)
    plain = emb.embed(texts)
    return {
        "instruction": instruction,
        "texts": len(texts),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "cosine_with_vs_without_instruction_mean": float(row_cosines(ours, plain).mean()),
    }


def known_answer_model(reference: str, kind: str, emb: Embedder) -> str | None:
    """The model whose card scores apply: only a real (not random) full export of it."""
    if kind == "random":
        return None
    key = model_key(reference, emb.manifest.source.get("model"))
    if key not in CARD_SCORES:
        return None
    arch = emb.manifest.architecture
    layers = arch.get("layers_exported", arch.get("num_hidden_layers"))
    if layers != arch.get("num_hidden_layers"):
        return None
    return key


def known_answer(emb: Embedder, model: str | None, *, force: str | None = None) -> dict[str, Any]:
    """The model card's 2 x 2 query-document scores, recomputed with the artifact."""
    key = force or model
    if key is None:
        return {
            "skipped": "enabled only when the reference is the real Qwen/Qwen3-Embedding-0.6B "
            "(full export of the published weights); this reference is not"
        }
    expected = np.array(CARD_SCORES[key])
    q = emb.embed(CARD_QUERIES, instruction=CARD_TASK)
    d = emb.embed(CARD_DOCUMENTS)
    scores = q @ d.T
    return {
        "model": key,
        "scores": scores.round(7).tolist(),
        "expected": expected.tolist(),
        "max_error": float(np.abs(scores - expected).max()),
    }
