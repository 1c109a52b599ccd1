"""The fidelity check of a quantized export, and its refusal, by the task's metric.

The float graph runs once on the calibration rows (its outputs are the reference, the
activations it captures feed GPTQ or SmoothQuant); a quantized candidate, or the written
artifact, runs on the same rows in the runtime's batches and is compared with the reference by
the task's metric (`tasks.Task.metric`) against its bar (`export/bars.py`):

* cosine (embed): the lowest cosine of a text's vector must reach the bar;
* logodds (rerank): the largest |log-odds difference| of any pair must stay within its bar and
  the mean top-3 overlap per query must reach its bar (one of three may swap with a near tie).

`verify_quantized` is the step the exporter calls after writing the artifact: it records the
check in the manifest and refuses the artifact past the bar.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ...manifest import GRAPH_NAME
from ...util import row_cosines
from .calibration import ActivationStats, Rows, Runner, save_with_outputs

log = logging.getLogger("qexport")


class QuantizationRefused(ValueError):
    """Calibration shows the quantized model would miss its fidelity bar."""


@dataclass
class CheckTexts:
    """The calibration / check rows, what the runs read and ask for, and the float graph's
    outputs on them."""

    rows: Rows
    output: str  # the graph output compared (tasks.Task.output)
    device: str  # what the runs ask onnxruntime for: "cpu", or "auto" for a CUDA target
    base: str  # the float graph's precision
    reference: np.ndarray | None = None  # the float graph's outputs, one row per row

    def runner(self, graph: Path) -> Runner:
        return Runner(graph, self.device, self.base, self.output, self.rows)

    def outputs(self, graph: Path) -> np.ndarray:
        """The saved graph's outputs on the check rows (the runtime's batches)."""
        return self.runner(graph).outputs()

    def cosines(self, graph: Path) -> np.ndarray:
        """Per text, the cosine of the saved graph's vector with the float graph's."""
        assert self.reference is not None
        return row_cosines(self.outputs(graph), self.reference)


@dataclass(frozen=True)
class CosineCheck:
    """Embeddings: the lowest cosine against the float graph's vectors."""

    bar: float

    def head(self, rows: Rows, source: str, base: str) -> dict[str, Any]:
        return {"texts": len(rows), "source": source, "reference": f"float graph ({base})"}

    def measure(self, got: np.ndarray, ref: np.ndarray, rows: Rows) -> dict[str, Any]:
        return summary(row_cosines(got, ref))

    def refusal(self, quant: Quantized) -> str | None:
        record = quant.info["check"]
        log.info(
            "check          min cosine %.5f, mean %.5f vs the float graph (%d texts)",
            record["min_cosine"], record["mean_cosine"], record["texts"],
        )  # fmt: skip
        if record["min_cosine"] >= self.bar:
            return None
        mixed = quant.info.get("wider_projections") or {}
        widened = f" with {len(mixed)} projections in int8" if mixed else ""
        return (
            f"{quant.precision} refused: min cosine {record['min_cosine']:.4f} vs the float "
            f"graph on the check texts{widened} is below the bar {self.bar}; use a wider "
            "precision (int8, fp16) or accept it with --min-cosine"
        )


@dataclass(frozen=True)
class LogOddsCheck:
    """Rerankers: the largest |log-odds difference| over the pairs, and the mean top-k
    overlap per query (the quantized top k against the float graph's)."""

    max_diff: float
    min_overlap: float
    k: int = 3

    def head(self, rows: Rows, source: str, base: str) -> dict[str, Any]:
        return {"pairs": len(rows), "queries": len(rows.groups), "source": source,
                "reference": f"float graph ({base})"}  # fmt: skip

    def measure(self, got: np.ndarray, ref: np.ndarray, rows: Rows) -> dict[str, Any]:
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        bounds = np.cumsum([0, *rows.groups])
        overlap = [top_k_overlap(got[a:b], ref[a:b], self.k) for a, b in itertools.pairwise(bounds)]
        return {
            "max_abs_logodds_diff": round(float(diff.max()), 6),
            "mean_abs_logodds_diff": round(float(diff.mean()), 6),
            "top3_overlap_mean": round(float(np.mean(overlap)), 6),
            "max_logodds_diff_bar": self.max_diff,
            "min_top3_overlap_bar": round(self.min_overlap, 6),
        }

    def refusal(self, quant: Quantized) -> str | None:
        r = quant.info["check"]
        diff, overlap = r["max_abs_logodds_diff"], r["top3_overlap_mean"]
        log.info(
            "check          max |d log-odds| %.5f, top-3 overlap %.3f vs the float graph (%d pairs)",
            diff, overlap, r["pairs"],
        )  # fmt: skip
        if diff <= self.max_diff and overlap >= self.min_overlap:
            return None
        return (
            f"{quant.precision} refused: max |log-odds difference| {diff:.4f} vs the float graph "
            f"on {r['pairs']} check pairs (bar {self.max_diff}), top-3 overlap {overlap:.3f} "
            f"(bar {self.min_overlap:.3f}); use fp16 or fp32, or accept it with --max-logodds-diff"
        )


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    k = min(k, len(a))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


@dataclass
class Quantized:
    """A quantized graph's manifest record and weight size, and what its check needs."""

    precision: str
    info: dict[str, Any]
    gate: CosineCheck | LogOddsCheck  # the task's metric and bars
    texts: CheckTexts | None = None  # None: the float graph never ran (rtn, --no-check)
    checked: bool = False  # info["check"] was measured on the final graph already
    weight_bytes: int = 0

    @property
    def bar(self) -> float:
        """The min-cosine bar (the int4 and int8-dynamic searches aim above it)."""
        assert isinstance(self.gate, CosineCheck)
        return self.gate.bar


def summary(cos: np.ndarray) -> dict[str, Any]:
    return {
        "min_cosine": round(float(cos.min()), 6),
        "mean_cosine": round(float(cos.mean()), 6),
        "worst_text": int(cos.argmin()),
    }


def initializer_bytes(model: ir.Model) -> int:
    total = 0
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is not None:
            total += t.nbytes
    return total


def model_over(model: ir.Model, graph: ir.Graph) -> ir.Model:
    """A model over `graph` with `model`'s IR version, producer and opsets (a candidate)."""
    out = ir.Model(graph, ir_version=model.ir_version, producer_name=model.producer_name)
    out.opset_imports.update(model.opset_imports)
    return out


def float_run(
    model: ir.Model,
    scratch: Path,
    texts: CheckTexts,
    capture: list[ir.Value],
    hessians: dict[str, np.ndarray] | None = None,
    embed: bool = True,
    xtx: bool = False,
) -> tuple[np.ndarray | None, dict[str, ActivationStats]]:
    """The float graph on the calibration rows: its outputs (unless `embed` is False), and per
    captured activation its statistics (with its X^T X if `xtx`), or (`hessians` given) its
    X^T X put into that dict."""
    folder = scratch / "float"
    folder.mkdir()
    path = save_with_outputs(model, folder, initializer_bytes(model), capture)
    runner = texts.runner(path)
    # float: the same vectors whatever the batching
    ref = runner.outputs(calibration=True) if embed else None
    names = [v.name or "" for v in capture]
    stats: dict[str, ActivationStats] = {}
    if capture and hessians is not None:
        hessians.update(runner.hessians(names))
    elif capture:
        stats = runner.activations(names, xtx=xtx)
    del runner
    shutil.rmtree(folder)
    return ref, stats


def candidate_cosines(
    candidate: ir.Model, scratch: Path, name: str, texts: CheckTexts
) -> np.ndarray:
    """Write a quantized candidate to the scratch folder, run it on the check texts and
    return its cosines against the float reference; the candidate's files are removed."""
    folder = scratch / name
    folder.mkdir()
    try:
        return texts.cosines(save_with_outputs(candidate, folder, initializer_bytes(candidate)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def verify_quantized(folder: Path, quant: Quantized) -> None:
    """The check after the artifact is written to `folder`: unless the graph written was
    already measured, it runs on the check rows against the float graph's outputs and the
    result goes into `quant.info["check"]`; QuantizationRefused past the task's bar."""
    texts = quant.texts
    if texts is None or texts.reference is None:
        return
    if not quant.checked:
        got = texts.outputs(folder / GRAPH_NAME)
        quant.info["check"].update(quant.gate.measure(got, texts.reference, texts.rows))
    refusal = quant.gate.refusal(quant)
    if refusal is not None:
        raise QuantizationRefused(refusal)
