"""What a model is for: one frozen declaration per task, and the one place task names live.

A task says, as data, what every layer needs to know about it:

* ``outputs``: the graph outputs the manifest records and the runtime's graph check compares,
  ``output`` the one the runtime reads per row (its rows are what the batcher and the
  quantization check collect), ``row_shape`` that output's per-row shape ("dim": the
  embedding width; () one number per row);
* ``input_format``: how a request becomes token rows ("text": the instruction template, cut
  from the end with the end token kept last; "pair": the manifest's prompt around
  query + document, the document cut so the prompt's suffix survives);
* ``postprocess``: what the runtime does to a finished row block (Matryoshka slice and
  renormalise; the reranker's sigmoid);
* ``metric``: how quantization and validation compare two runs of it ("cosine" per row;
  "logodds": the largest |log-odds| difference plus the top-k overlap per query), and the
  bars of that metric live in `export/bars.py` under the task's name;
* ``reference``: the PyTorch recipe `qexport validate` compares with, per family spec;
* ``precisions``: what the task can be exported in.

The graph head for each task is built by `export/heads.py` (``HEADS[task.name]``); this module
imports numpy only, so the runtime, the server and the CLI's help read it freely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from .util import renormalise


@dataclass(frozen=True)
class Task:
    name: str
    noun: str  # "an embedding" / "a rerank": error messages ("... is a rerank artifact")
    runtime_class: str  # the runtime class that opens it
    outputs: tuple[str, ...]
    output: str
    row_shape: str | tuple[int, ...]
    input_format: str  # "text" | "pair"
    metric: str  # "cosine" | "logodds"
    precisions: tuple[str, ...]
    unit: str  # what one row is, in messages: "text" / "pair"
    postprocess: Callable[..., np.ndarray]


def matryoshka(out: np.ndarray, dim: int | None, *, normalize: bool) -> np.ndarray:
    """Keep the first `dim` values of each row and renormalise (when the model normalises)."""
    if dim is None or dim == out.shape[-1]:
        return out
    cut = out[:, :dim]
    if normalize:
        cut = renormalise(cut)
    return np.ascontiguousarray(cut, dtype=np.float32)


def sigmoid(x: Any) -> np.ndarray:
    """Stable in float64 for large |x|, returned as float32."""
    x64 = np.asarray(x, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * x64))).astype(np.float32)


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """The reranker's post-processing: P(yes) = sigmoid(log-odds)."""
    return sigmoid(logits)


def check_top_n(top_n: Any) -> None:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ValueError(f"top_n must be a positive integer, got {top_n!r}")


def ranked(scores: np.ndarray, top_n: int | None) -> list[tuple[int, float]]:
    """(index, score) best first (ties: lower index first), the best `top_n` only."""
    order = np.argsort(-scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    return [(int(i), float(scores[i])) for i in order]


EMBED = Task(
    name="embed",
    noun="an embedding",
    runtime_class="Embedder",
    outputs=("sentence_embedding",),
    output="sentence_embedding",
    row_shape="dim",
    input_format="text",
    metric="cosine",
    precisions=("fp32", "fp16", "bf16", "int8", "int4", "int8-dynamic"),
    unit="text",
    postprocess=matryoshka,
)

RERANK = Task(
    name="rerank",
    noun="a rerank",
    runtime_class="Reranker",
    outputs=("score", "logit"),
    output="logit",
    row_shape=(),
    input_format="pair",
    metric="logodds",
    precisions=("fp32", "fp16", "bf16", "int8"),
    unit="pair",
    postprocess=scores_from_logits,
)

TASKS: MappingProxyType[str, Task] = MappingProxyType({t.name: t for t in (EMBED, RERANK)})
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
DEFAULT_TASK = "embed"  # manifests written before tasks existed load as this


def get_task(name: str) -> Task:
    """The task called `name`; ValueError naming the known ones."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}") from None


def wrong_task(path: str, got: str, want: str) -> str:
    """'<path>' is a rerank artifact, not an embedding model: use qexport.runtime.Reranker"""
    have = TASKS.get(got)
    noun = have.noun if have is not None else f"a {got!r}"
    hint = f"use qexport.runtime.{have.runtime_class}" if have is not None else "re-export it"
    what = "an embedding model" if want == "embed" else f"a {want}er"
    return f"{path!r} is {noun} artifact, not {what}: {hint}"
