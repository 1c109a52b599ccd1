"""Quantization passes over the float onnx-ir graph, before it is written.

- int8 / int4: weight-only `MatMulNBits` (matmul_nbits.py), on the fp32 (CPU) or fp16
  (CUDA) graph; embedding table, norms and attention stay float.
- int8-dynamic (CPU only): `DynamicQuantizeMatMul` with SmoothQuant scale migration from
  calibration texts (smoothquant.py, dynamic.py); projections that still hurt are left in
  float, and the export is refused when even that cannot hold the bar.

Every export is checked: the float graph and the quantized graph run on the check texts and
the min cosine goes into the manifest (calibration.py). See docs/design.md, "Quantization".
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ...manifest import GRAPH_NAME
from ..source import ModelSource
from .calibration import (
    CHECK_BATCH,
    ActivationStats,
    Batches,
    CalibrationError,
    Runner,
    encoder_for,
    load_texts,
    save_with_outputs,
    scratch_folder,
)
from .dynamic import apply_dynamic_int8
from .gptq import CLIP_RATIOS, DAMP, BlockQuantized, gptq, hessian_factor, output_error
from .matmul_nbits import apply_matmul_nbits
from .smoothquant import (
    Group,
    apply_smoothing,
    group_targets,
    group_weight,
    simulated_error,
    smoothing_factors,
)
from .targets import Target, matmul_targets

log = logging.getLogger("qexport")

QUANT_PRECISIONS = ("int8", "int4", "int8-dynamic")
# min cosine vs the float graph on the check texts (the bars vs PyTorch fp32)
BARS = {"int8": 0.995, "int4": 0.98, "int8-dynamic": 0.99}
BITS = {"int8": 8, "int4": 4}
# 32 for both: with accuracy level 4 the activations are quantized per block too, and 32 beats
# 128 on fidelity (MiniLM held-out min cosine int8 0.9985 vs 0.9949, under int8's 0.995 bar;
# int4 0.908 vs 0.854 round-to-nearest) and on CPU speed (docs/benchmarks.md, Quantization)
DEFAULT_BLOCK_SIZE = {"int8": 32, "int4": 32}
# how MatMulNBits weights are rounded: plain round-to-nearest (onnxruntime's kernel) or GPTQ
# from calibration activations; int4 needs GPTQ to hold its bar (docs/benchmarks.md)
METHODS = ("rtn", "gptq")
DEFAULT_METHOD = {"int8": "rtn", "int4": "gptq"}
DEFAULT_SYMMETRIC = {"int8": True, "int4": False}
HESSIAN_BUDGET = 1 << 30  # bytes of X^T X (float32) gathered per calibration run
# int4 mixed precision: the projections with the largest GPTQ output error go to int8, a few
# at a time, until the check texts hold the bar plus a margin (the check texts are also the
# calibration texts, so they flatter GPTQ); at most this fraction of the projection weights
WIDER_STEPS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
WIDER_MARGIN = 0.005
MAX_WIDER_FRACTION = 0.25
CPU_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits (AVX512-VNNI / AVX-VNNI kernels)
DEVICES = ("cpu", "cuda")
# int8-dynamic: fractions of the smoothed projection groups left in float, tried in order
FLOAT_FRACTIONS = (0.0, 0.1, 0.25, 0.35, 0.5)

__all__ = [
    "BARS",
    "MAX_WIDER_FRACTION",
    "QUANT_PRECISIONS",
    "CalibrationError",
    "QuantOptions",
    "QuantizationRefused",
    "Quantized",
    "base_precision",
    "quantize_model",
]


class QuantizationRefused(ValueError):
    """Calibration shows the quantized model would miss its fidelity bar."""


@dataclass
class QuantOptions:
    block_size: int | None = None  # None: DEFAULT_BLOCK_SIZE[precision]
    method: str | None = None  # int8 / int4: "rtn" or "gptq"; None: DEFAULT_METHOD[precision]
    symmetric: bool | None = None  # None: DEFAULT_SYMMETRIC[precision] with gptq, else symmetric
    damp: float = DAMP  # gptq: mean(diag H) x damp added to H's diagonal
    accuracy_level: int | None = None  # None: 4 on CPU, unset (0) for CUDA
    calibration: str | Path | None = None  # a text per line; None: qexport.texts.BUILTIN_TEXTS
    alphas: tuple[float, ...] = (0.5, 0.75, 0.9)  # SmoothQuant strengths tried per group
    min_cosine: float | None = None  # None: BARS[precision]
    check: bool = True  # run the check texts (int8-dynamic always calibrates)


def base_precision(precision: str, device: str) -> str:
    """The float graph a quantized precision starts from: fp32 for CPU, fp16 for CUDA."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision == "int8-dynamic" and device != "cpu":
        raise ValueError(
            "int8-dynamic is CPU only (onnxruntime's CUDA provider has no DynamicQuantizeMatMul "
            "kernel); use --precision int8 or int4 for CUDA"
        )
    return "fp16" if device == "cuda" else "fp32"


@dataclass
class Quantized:
    """The quantized graph's bookkeeping: manifest record, size, and the check."""

    precision: str
    info: dict[str, Any]
    weight_bytes: int
    batches: Batches | None = None  # check runs
    calibration: Batches | None = None  # float run with captured activations
    reference: np.ndarray | None = None
    device: str = "cpu"
    bar: float = 0.0
    checked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, folder: Path) -> None:
        """Run the written artifact on the check texts against the float graph's vectors."""
        if self.batches is None or self.reference is None:
            return
        if not self.checked:
            cos = _cosines(
                Runner(folder / GRAPH_NAME, self.device, self.info["base_precision"]).embed(
                    self.batches
                ),
                self.reference,
            )
            self.info["check"].update(_summary(cos))
        got = self.info["check"]["min_cosine"]
        log.info(
            "check          min cosine %.5f, mean %.5f vs the float graph (%d texts)",
            got,
            self.info["check"]["mean_cosine"],
            self.info["check"]["texts"],
        )
        if got < self.bar:
            mixed = self.info.get("wider_projections") or {}
            widened = f" with {len(mixed)} projections in int8" if mixed else ""
            raise QuantizationRefused(
                f"{self.precision} refused: min cosine {got:.4f} vs the float graph on the "
                f"check texts{widened} is below the bar {self.bar}; use a wider precision "
                "(int8, fp16) or accept it with --min-cosine"
            )


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _summary(cos: np.ndarray) -> dict[str, Any]:
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


def quantize_model(
    model: ir.Model,
    precision: str,
    src: ModelSource,
    max_length: int,
    workdir: Path,
    *,
    device: str = "cpu",
    options: QuantOptions | None = None,
) -> Quantized:
    """Rewrite `model` (the float graph from build_model) in place for `precision`.

    Runs the float graph once on the check/calibration texts (written to a scratch folder in
    `workdir`, removed afterwards). int8-dynamic is checked here and refused below its bar;
    int8 / int4 are checked by `Quantized.check` after the artifact is written."""
    opts = options or QuantOptions()
    if precision not in QUANT_PRECISIONS:
        raise ValueError(f"{precision!r} is not a quantized precision ({QUANT_PRECISIONS})")
    base = base_precision(precision, device)
    bar = BARS[precision] if opts.min_cosine is None else opts.min_cosine
    texts = load_texts(opts.calibration)
    text_source = "builtin" if opts.calibration is None else Path(opts.calibration).name
    run_device = "auto" if device == "cuda" else "cpu"
    info: dict[str, Any] = {"base_precision": base, "device": device}
    quant = Quantized(precision, info, 0, device=run_device, bar=bar)
    method = opts.method or DEFAULT_METHOD.get(precision, "rtn")
    if method not in METHODS:
        raise ValueError(f"quantization method must be one of {', '.join(METHODS)}, got {method!r}")
    if opts.symmetric is not None:
        symmetric = opts.symmetric
    else:  # zero points come from gptq's grid search; round-to-nearest is symmetric
        symmetric = DEFAULT_SYMMETRIC.get(precision, True) if method == "gptq" else True
    if not symmetric and method != "gptq":
        raise ValueError("asymmetric (zero-point) weights are made by the gptq method only")
    need_float_run = opts.check or precision == "int8-dynamic" or method == "gptq"
    with scratch_folder(workdir) as scratch:
        if need_float_run:
            encoder = encoder_for(src, scratch / "tokenizer", max_length)
            names = [v.name or "" for v in model.graph.inputs]
            quant.calibration = Batches.build(encoder, texts, names)
            quant.batches = Batches.build(encoder, texts, names, batch_size=CHECK_BATCH)
            info["check"] = {
                "texts": len(texts),
                "source": text_source,
                "reference": f"float graph ({base})",
            }
        if precision in BITS:
            bits = BITS[precision]
            block_size = opts.block_size or DEFAULT_BLOCK_SIZE[precision]
            level = opts.accuracy_level
            if level is None:
                level = CPU_ACCURACY_LEVEL if device == "cpu" else 0
            nbits = {"bits": bits, "block_size": block_size, "accuracy_level": level}
            done = None
            wider: dict[str, int] = {}
            if method == "gptq":
                float_graph = model.graph.clone()  # weights shared, lazily loaded
                quant.reference, done, error = _gptq(
                    model, scratch, quant, bits, block_size, symmetric, opts.damp
                )
                if bits == 4 and opts.check:
                    wider = _widen(model, float_graph, scratch, quant, nbits, done, error)
            elif need_float_run:
                quant.reference = _float_run(model, scratch, quant, [])[0]
            info.update(apply_matmul_nbits(model, **nbits, done=done, wider=wider))  # type: ignore[arg-type]
            if method == "gptq":
                info["gptq"] = {
                    "calibration_texts": quant.calibration.n_texts,  # type: ignore[union-attr]
                    "damp": opts.damp,
                    "clip_ratios": list(CLIP_RATIOS),
                }
        else:
            info.update(_dynamic(model, scratch, quant, opts))
            quant.checked = True
    info["unquantized"] = "embedding table, norms, attention, pooling"
    quant.weight_bytes = initializer_bytes(model)
    return quant


def _model_over(model: ir.Model, graph: ir.Graph) -> ir.Model:
    """A model over `graph` with `model`'s IR version, producer and opsets (a candidate)."""
    out = ir.Model(graph, ir_version=model.ir_version, producer_name=model.producer_name)
    out.opset_imports.update(model.opset_imports)
    return out


def _candidate_cosines(
    candidate: ir.Model, scratch: Path, name: str, quant: Quantized
) -> np.ndarray:
    """Write a quantized candidate to the scratch folder, run it on the check texts and
    return its cosines against the float reference; the candidate's files are removed."""
    folder = scratch / name
    folder.mkdir()
    try:
        path = save_with_outputs(candidate, folder, initializer_bytes(candidate))
        runner = Runner(path, quant.device, quant.info["base_precision"])
        return _cosines(runner.embed(quant.batches), quant.reference)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _float_run(
    model: ir.Model,
    scratch: Path,
    quant: Quantized,
    capture: list[ir.Value],
    hessians: dict[str, np.ndarray] | None = None,
    embed: bool = True,
) -> tuple[np.ndarray | None, dict[str, ActivationStats]]:
    """The float graph on the calibration texts: its vectors (unless `embed` is False), and per
    captured activation its statistics, or (`hessians` given) its X^T X put into that dict."""
    folder = scratch / "float"
    folder.mkdir()
    path = save_with_outputs(model, folder, initializer_bytes(model), capture)
    runner = Runner(path, quant.device, quant.info["base_precision"])
    assert quant.calibration is not None
    # float: the same vectors whatever the batching
    ref = runner.embed(quant.calibration) if embed else None
    names = [v.name or "" for v in capture]
    stats: dict[str, ActivationStats] = {}
    if capture and hessians is not None:
        hessians.update(runner.hessians(quant.calibration, names))
    elif capture:
        stats = runner.activations(quant.calibration, names)
    del runner
    shutil.rmtree(folder)
    return ref, stats


def _gptq(
    model: ir.Model,
    scratch: Path,
    quant: Quantized,
    bits: int,
    block_size: int,
    symmetric: bool = True,
    damp: float = DAMP,
) -> tuple[np.ndarray, dict[str, BlockQuantized], dict[str, float]]:
    """GPTQ every projection from X^T X of its input on the calibration texts. The float
    graph runs once per chunk of projection groups whose Hessians fit HESSIAN_BUDGET; each
    chunk is quantized (packed int4/int8 kept, Hessians dropped) before the next run. Also
    returns each projection's relative output error on the calibration activations."""
    groups = group_targets(matmul_targets(model.graph))
    chunks: list[list[Group]] = [[]]
    size = 0
    for g in groups:
        need = 4 * g.targets[0].k ** 2
        if chunks[-1] and size + need > HESSIAN_BUDGET:
            chunks.append([])
            size = 0
        chunks[-1].append(g)
        size += need
    done: dict[str, BlockQuantized] = {}
    error: dict[str, float] = {}
    ref: np.ndarray | None = None
    for i, chunk in enumerate(chunks):
        hessians: dict[str, np.ndarray] = {}
        capture = [g.activation for g in chunk]
        got, _ = _float_run(model, scratch, quant, capture, hessians, embed=i == 0)
        ref = got if i == 0 else ref
        for g in chunk:
            h = hessians.pop(g.activation.name or "")
            factor = hessian_factor(h, damp)  # once for the projections sharing this input
            for t in g.targets:
                w = t.load()
                done[t.name] = gptq(w, factor, bits, block_size, symmetric)
                error[t.name] = output_error(w, done[t.name], h)
            del h
    assert ref is not None
    return ref, done, error


def _widen(
    model: ir.Model,
    float_graph: ir.Graph,
    scratch: Path,
    quant: Quantized,
    nbits: dict[str, int],
    done: dict[str, BlockQuantized],
    error: dict[str, float],
) -> dict[str, int]:
    """int4 mixed precision: which projections go to int8 (WIDER_STEPS, worst GPTQ output
    error first). Each candidate is written and run on the check texts; the first holding the
    bar + WIDER_MARGIN wins, else the widest allowed one (which the check then refuses when it
    is below the bar)."""
    ranked = sorted(error, key=error.__getitem__, reverse=True)
    sizes = {t.name: t.k * t.n for t in matmul_targets(float_graph)}
    total = sum(sizes.values())
    attempts: list[dict[str, Any]] = []
    chosen: dict[str, int] = {}
    for m in WIDER_STEPS:
        wider = {name: 8 for name in ranked[:m]}
        if m > len(ranked) or sum(sizes[n] for n in wider) > MAX_WIDER_FRACTION * total:
            break
        candidate = _model_over(model, float_graph.clone())
        apply_matmul_nbits(candidate, **nbits, done=done, wider=wider)  # type: ignore[arg-type]
        cos = _candidate_cosines(candidate, scratch, f"int4-{m}", quant)
        attempts.append({"int8_projections": m, **_summary(cos)})
        log.info(
            "int4 + gptq    %d/%d projections int8: min cosine %.5f", m, len(ranked), cos.min()
        )
        chosen = wider
        quant.info["check"].update(_summary(cos))
        if cos.min() >= quant.bar + WIDER_MARGIN:
            break
    quant.checked = bool(attempts)
    quant.info["mixed_precision"] = {
        "rule": f"worst GPTQ output error first, until min cosine >= bar + {WIDER_MARGIN} "
        f"on the check texts, at most {MAX_WIDER_FRACTION:.0%} of projection weights",
        "output_error": {k: round(v, 6) for k, v in sorted(error.items())},
        "attempts": attempts,
    }
    return chosen


def _dynamic(
    model: ir.Model, scratch: Path, quant: Quantized, opts: QuantOptions
) -> dict[str, Any]:
    """SmoothQuant + DynamicQuantizeMatMul; leaves the worst groups float until the check
    texts hold the bar, or refuses."""
    float_graph = model.graph.clone()  # untouched copy (weights shared, lazily loaded)
    targets = matmul_targets(model.graph)
    groups = group_targets(targets)
    ref, stats = _float_run(model, scratch, quant, [g.activation for g in groups])
    quant.reference = ref
    # per group: the migration strength (or none) with the smallest simulated output error
    # on sampled calibration rows; groups are then ranked by that error
    factors: dict[str | None, np.ndarray | None] = {}
    error: dict[str, float] = {}
    alphas: dict[str, float | None] = {}
    for g in groups:
        name = g.activation.name or ""
        st = stats[name]
        w = group_weight(g)
        x = st.sample
        best: tuple[float, float | None, np.ndarray | None] | None = None
        for alpha in (None, *opts.alphas):
            s = None if alpha is None else smoothing_factors(w, st.absmax, alpha)
            err = simulated_error(x, w, st.lo, st.hi, s)  # type: ignore[arg-type]
            if best is None or err < best[0]:
                best = (err, alpha, s)
        assert best is not None
        error[name], alphas[name], factors[name] = best
        del w
    ranked = sorted(error, key=error.__getitem__, reverse=True)
    tried: list[dict[str, Any]] = []
    for fraction in FLOAT_FRACTIONS:
        keep = set(ranked[: round(fraction * len(ranked))])
        if tried and keep == set(tried[-1]["float_groups"]):
            continue
        candidate = _model_over(model, float_graph.clone()) if tried else model
        record = _dynamic_candidate(candidate, factors, keep)
        cos = _candidate_cosines(candidate, scratch, f"candidate{len(tried)}", quant)
        record.update(_summary(cos), float_groups=sorted(keep))
        tried.append(record)
        log.info(
            "int8-dynamic   %d/%d projection groups float: min cosine %.5f",
            len(keep),
            len(ranked),
            record["min_cosine"],
        )
        if record["min_cosine"] >= quant.bar:
            if candidate is not model:
                _swap_graph(model, candidate)
            quant.info["check"].update(_summary(cos))
            return {
                "method": "DynamicQuantizeMatMul",
                "weights": "int8 symmetric, per output channel",
                "activations": "uint8 per tensor, quantized at run time",
                "smoothquant": {
                    "alphas_tried": [None, *opts.alphas],
                    "alpha_per_group": {k: alphas[k] for k in error},
                    "simulated_error_per_group": {k: round(error[k], 5) for k in error},
                    "folded": record["folded"],
                },
                "matmuls_quantized": record["matmuls_quantized"],
                "float_projections": record["float_projections"],
                "attempts": [
                    {"float_groups": len(t["float_groups"]), "min_cosine": t["min_cosine"]}
                    for t in tried
                ],
            }
    best = max(t["min_cosine"] for t in tried)
    raise QuantizationRefused(
        f"int8-dynamic refused: calibration measured min cosine {tried[0]['min_cosine']:.4f} "
        f"vs the float graph with every projection quantized and {best:.4f} at best with "
        f"{int(FLOAT_FRACTIONS[-1] * 100)}% of them left in float (bar {quant.bar}); "
        "use --precision int8 (weight-only, int8 activations per block on CPU)"
    )


def _dynamic_candidate(
    model: ir.Model, factors: dict[str | None, np.ndarray | None], keep_float: set[str]
) -> dict[str, Any]:
    targets = matmul_targets(model.graph)
    folded = {"norm": 0, "producer": 0, "mul": 0}  # where the smoothing division went
    quantize: list[Target] = []
    kept: list[str] = []
    for g in group_targets(targets):
        if g.activation.name in keep_float:
            kept.extend(t.name for t in g.targets)
            continue
        s = factors[g.activation.name]
        if s is not None:
            folded[apply_smoothing(model.graph, g, s, targets)] += 1
        quantize.extend(g.targets)
    apply_dynamic_int8(model, quantize)
    return {"folded": folded, "matmuls_quantized": len(quantize), "float_projections": kept}


def _swap_graph(model: ir.Model, candidate: ir.Model) -> None:
    model.graph = candidate.graph  # type: ignore[misc]
    model.opset_imports.update(candidate.opset_imports)
