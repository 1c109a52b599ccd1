"""Calibration and check rows (texts, or query-document pairs), and running a float or
quantized graph on them through the runtime's one row loop (`runtime.core.RowRunner`).

The float graph is written once to a scratch folder (the same writer as the artifact, so
weights are materialised one at a time) with the activations a pass asks for added as
extra outputs; one run gives the float outputs (the reference for the check) and the
per-channel |max| of each captured activation over real (unpadded) tokens.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ...manifest import GRAPH_NAME
from ...runtime.batching import DEFAULT_MAX_BATCH_TOKENS
from ...runtime.core import RowRunner
from ...runtime.session import create_session
from ...runtime.tokenize import TextEncoder
from ...texts import BUILTIN_TEXTS
from ..artifact import save_graph

TOKENS_PER_BATCH = 2048  # calibration runs (they return every captured activation)
CHECK_BATCH = 32  # check runs batch as Embedder.embed does by default: at most 32 rows and the
# runtime's token budget (int8-dynamic's per-tensor activation range depends on what shares
# a batch; and one batch of 32 texts padded to the longest ran 13x the real tokens)


class CalibrationError(ValueError):
    """The calibration texts cannot be used."""


def load_texts(path: str | Path | None) -> list[str]:
    """The built-in multilingual set, or the texts of a file read by the corpus record layer
    (`corpus.io.read_texts`: one text per line, blank lines skipped, or .jsonl / .parquet with
    a `text` field; its limits and errors)."""
    if path is None:
        return list(BUILTIN_TEXTS)
    from ...corpus.io import CorpusError, read_texts

    try:
        return read_texts(path, "calibration file")
    except CorpusError as exc:
        raise CalibrationError(str(exc)) from exc


@dataclass
class Rows:
    """The token rows the float and quantized graphs run on: a row per calibration text
    (embed) or per check pair (rerank, `groups`: pairs per query)."""

    ids: list[list[int]]
    type_ids: list[list[int]] | None = None
    pad_id: int = 0
    groups: list[int] = field(default_factory=list)

    @classmethod
    def from_texts(cls, encoder: TextEncoder, texts: Sequence[str]) -> Rows:
        enc = encoder.encode(list(texts), warn=False)
        return cls(enc.ids, enc.type_ids)

    def __len__(self) -> int:
        return len(self.ids)


class Runner:
    """An onnxruntime session over a saved graph, run on `Rows` by two `RowRunner`s over it:
    calibration batches of at most TOKENS_PER_BATCH padded tokens (the captured activations
    come back too), and check batches as the runtime makes them (CHECK_BATCH rows, the
    default token budget)."""

    def __init__(self, graph: Path, device: str, precision: str, output: str, rows: Rows):
        self.session = create_session(graph, device, precision)
        self.rows = rows

        def runner(budget: int) -> RowRunner:
            return RowRunner(self.session, output, pad_id=rows.pad_id, max_batch_tokens=budget,
                             unit="check row", precision=precision)  # fmt: skip

        self.calibration = runner(TOKENS_PER_BATCH)
        self.check = runner(DEFAULT_MAX_BATCH_TOKENS)

    def outputs(self, *, calibration: bool = False) -> np.ndarray:
        """The graph's output per row, in row order, NaN/Inf checked."""
        if calibration:
            return self.calibration.run(
                self.rows.ids, self.rows.type_ids, batch_size=len(self.rows)
            )
        return self.check.run(self.rows.ids, self.rows.type_ids, batch_size=CHECK_BATCH)

    def batches(self) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        rows = self.rows
        return self.calibration.prepare(rows.ids, rows.type_ids, batch_size=len(rows)).batches

    def activations(
        self, names: Sequence[str], sample_rows: int = 256, seed: int = 0, xtx: bool = False
    ) -> dict[str, ActivationStats]:
        """Per-channel |max|, the tensor's min/max and a sample of token rows for each named
        activation, over unpadded tokens ([B, S, C]) or texts ([B, C], after pooling); with
        `xtx`, also X^T X over those rows (GPTQ's H)."""
        rng = np.random.default_rng(seed)
        batches = self.batches()
        per_batch = max(1, sample_rows // max(1, len(batches)))
        stats: dict[str, ActivationStats] = {}
        for _idx, feed in batches:
            outs = self.session.run(list(names), feed)
            real = feed["attention_mask"].astype(bool)
            rows: dict[int, np.ndarray] = {}  # one sample of row indices per row count
            for name, arr in zip(names, outs, strict=True):
                a = np.asarray(arr, dtype=np.float32)
                x = _real_rows(a, real)
                if len(x) not in rows:
                    rows[len(x)] = rng.choice(len(x), size=min(per_batch, len(x)), replace=False)
                st = stats.setdefault(name, ActivationStats())
                # the range includes padded positions: the run-time quantizer sees them too
                st.add(a.reshape(-1, a.shape[-1]), x[rows[len(x)]], x if xtx else None)
        return stats

    def hessians(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """H = X^T X [C, C] (float32) of each named activation over the unpadded tokens
        ([B, S, C]) or the texts ([B, C], a Dense head after pooling): what GPTQ needs."""
        out: dict[str, np.ndarray] = {}
        for _idx, feed in self.batches():
            real = feed["attention_mask"].astype(bool)
            for name, arr in zip(names, self.session.run(list(names), feed), strict=True):
                x = _real_rows(np.asarray(arr, dtype=np.float32), real)
                xtx = x.T @ x
                if name in out:
                    out[name] += xtx
                else:
                    out[name] = xtx
        return out


def _real_rows(a: np.ndarray, real: np.ndarray) -> np.ndarray:
    """The rows of an activation that carry data: the unpadded tokens of a [B, S, C] tensor,
    every row of a pooled [B, C] one (the projections of a sentence-transformers Dense head)."""
    if a.ndim == 3:
        return a[real]
    if a.ndim == 2 and a.shape[0] == real.shape[0]:
        return a
    raise ValueError(f"calibration: activation of shape {a.shape} for a batch of {real.shape}")


@dataclass
class ActivationStats:
    """Per-channel min / max of an activation over the calibration tokens, and sample rows."""

    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    samples: list[np.ndarray] = field(default_factory=list)
    xtx: np.ndarray | None = None  # X^T X over the real rows, when asked for

    def add(self, x: np.ndarray, rows: np.ndarray, real: np.ndarray | None = None) -> None:
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        self.samples.append(rows)
        if real is not None:
            xtx = real.T @ real
            self.xtx = xtx if self.xtx is None else self.xtx + xtx

    @property
    def absmax(self) -> np.ndarray:
        assert self.lo is not None and self.hi is not None
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    @property
    def sample(self) -> np.ndarray:
        return np.concatenate(self.samples)


@contextlib.contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """A temporary folder beside the artifact (same disk), removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".qexport-calibration.", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_with_outputs(
    model: ir.Model, folder: Path, weight_bytes: int, extra: Sequence[ir.Value] = ()
) -> Path:
    """Write the graph with `extra` values added as outputs (the model is left unchanged)."""
    graph = model.graph
    n = len(graph.outputs)
    graph.outputs.extend(v for v in extra if v not in graph.outputs)
    try:
        save_graph(model, folder, weight_bytes)
    finally:
        while len(graph.outputs) > n:
            graph.outputs.pop()
    return folder / GRAPH_NAME
