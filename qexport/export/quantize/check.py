"""The fidelity check of a quantized export, and its refusal.

The float graph runs once on the calibration texts (its vectors are the reference, the
activations it captures feed GPTQ or SmoothQuant); a quantized candidate, or the written
artifact, runs on the same texts in the runtime's batches, and the lowest cosine of its vectors
against the reference must reach the bar. `verify_quantized` is the step the exporter calls
after writing the artifact: it records the check in the manifest and refuses below the bar.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ...manifest import GRAPH_NAME
from ...util import row_cosines
from .calibration import ActivationStats, Batches, Runner, save_with_outputs

log = logging.getLogger("qexport")


class QuantizationRefused(ValueError):
    """Calibration shows the quantized model would miss its fidelity bar."""


@dataclass
class CheckTexts:
    """The calibration / check texts as batches, and the float graph's vectors on them."""

    calibration: Batches  # batches of at most TOKENS_PER_BATCH tokens (calibration runs)
    check: Batches  # the runtime's batches (check runs)
    device: str  # what the runs ask onnxruntime for: "cpu", or "auto" for a CUDA target
    base: str  # the float graph's precision
    reference: np.ndarray | None = None  # the float graph's vectors, one row per text

    def cosines(self, graph: Path) -> np.ndarray:
        """Per text, the cosine of the saved graph's vector with the float graph's."""
        assert self.reference is not None
        vectors = Runner(graph, self.device, self.base).embed(self.check)
        return row_cosines(vectors, self.reference)


@dataclass
class Quantized:
    """A quantized graph's manifest record and weight size, and what its check needs."""

    precision: str
    info: dict[str, Any]
    bar: float
    texts: CheckTexts | None = None  # None: the float graph never ran (rtn, --no-check)
    checked: bool = False  # info["check"] was measured on the final graph already
    weight_bytes: int = 0


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
) -> tuple[np.ndarray | None, dict[str, ActivationStats]]:
    """The float graph on the calibration texts: its vectors (unless `embed` is False), and per
    captured activation its statistics, or (`hessians` given) its X^T X put into that dict."""
    folder = scratch / "float"
    folder.mkdir()
    path = save_with_outputs(model, folder, initializer_bytes(model), capture)
    runner = Runner(path, texts.device, texts.base)
    # float: the same vectors whatever the batching
    ref = runner.embed(texts.calibration) if embed else None
    names = [v.name or "" for v in capture]
    stats: dict[str, ActivationStats] = {}
    if capture and hessians is not None:
        hessians.update(runner.hessians(texts.calibration, names))
    elif capture:
        stats = runner.activations(texts.calibration, names)
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
    already measured, it runs on the check texts against the float graph's vectors and the
    result goes into `quant.info["check"]`; QuantizationRefused below the bar."""
    if quant.texts is None or quant.texts.reference is None:
        return
    record = quant.info["check"]
    if not quant.checked:
        record.update(summary(quant.texts.cosines(folder / GRAPH_NAME)))
    got = record["min_cosine"]
    log.info(
        "check          min cosine %.5f, mean %.5f vs the float graph (%d texts)",
        got,
        record["mean_cosine"],
        record["texts"],
    )
    if got < quant.bar:
        mixed = quant.info.get("wider_projections") or {}
        widened = f" with {len(mixed)} projections in int8" if mixed else ""
        raise QuantizationRefused(
            f"{quant.precision} refused: min cosine {got:.4f} vs the float graph on the "
            f"check texts{widened} is below the bar {quant.bar}; use a wider precision "
            "(int8, fp16) or accept it with --min-cosine"
        )
