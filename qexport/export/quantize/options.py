"""What a quantized export does: the defaults per precision, `QuantOptions`, and their
resolution into a `Plan`, validated once before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...tasks import EMBED, Task
from ..bars import BARS, LOGODDS_BARS, QUANT_PRECISIONS, TOP3_OVERLAP_BARS
from .check import CosineCheck, LogOddsCheck
from .gptq import DAMP

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
# activation-aware scales before GPTQ (awq.py): "off", "fold" (into a norm or the producing
# projection only), "all" (also an explicit Mul where nothing can take it). Off by default: with
# int4's int8 widening it measured no better held out (MiniLM block 32 min cosine 0.967 off,
# 0.964 all; Gemma3 shape 0.970 off, 0.962 fold; docs/benchmarks.md, issue 28 int4)
AWQ_MODES = ("off", "fold", "all")
# int8-dynamic's activation scales (QuantOptions.per_token; dynamic_search.py)
PER_TOKEN_MODES = ("none", "auto", "ffn", "all")
# where neither the option nor the family (FamilySpec.int8_dynamic_per_token) names one
DEFAULT_PER_TOKEN = "all"
DEFAULT_AWQ = {"int4": "off"}
CPU_ACCURACY_LEVEL = 4  # int8 activations inside MatMulNBits (AVX512-VNNI / AVX-VNNI kernels)
DEVICES = ("cpu", "cuda")


@dataclass
class QuantOptions:
    block_size: int | None = None  # None: DEFAULT_BLOCK_SIZE[precision]
    method: str | None = None  # int8 / int4: "rtn" or "gptq"; None: DEFAULT_METHOD[precision]
    symmetric: bool | None = None  # None: DEFAULT_SYMMETRIC[precision] with gptq, else symmetric
    damp: float = DAMP  # gptq: mean(diag H) x damp added to H's diagonal
    accuracy_level: int | None = None  # None: 4 on CPU, unset (0) for CUDA
    calibration: str | Path | None = None  # a text per line; None: qexport.texts.BUILTIN_TEXTS
    alphas: tuple[float, ...] = (0.5, 0.75, 0.9)  # SmoothQuant strengths tried per group
    # int8-dynamic: activations scaled per token: none, auto, ffn, all (all: MiniLM held-out min
    # cosine 0.9959 with SmoothQuant, 0.9834 per tensor; ffn, the FFN output projection only:
    # MiniLM 0.9962 at 1.13x all's speed, Qwen3 shape 0.99900 vs all's 0.99929 against PyTorch;
    # docs/benchmarks.md, issue 28); None: the family's (FamilySpec.int8_dynamic_per_token),
    # else DEFAULT_PER_TOKEN
    per_token: str | None = None
    min_cosine: float | None = None  # embed: None: BARS[precision]
    max_logodds_diff: float | None = None  # rerank: None: LOGODDS_BARS[precision]
    check: bool = True  # run the check texts (int8-dynamic always calibrates)
    awq: str | None = None  # gptq: AWQ_MODES; None: DEFAULT_AWQ[precision] (else off)


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


@dataclass(frozen=True)
class Plan:
    """A quantized export's settings, every default filled in."""

    precision: str
    device: str  # the target: cpu or cuda
    base: str  # the float graph's precision: fp32 (cpu) or fp16 (cuda)
    gate: CosineCheck | LogOddsCheck  # the task's metric and bars vs the float graph
    method: str  # MatMulNBits weights: rtn or gptq
    symmetric: bool
    check: bool
    damp: float
    awq: str = "off"  # activation-aware scales before GPTQ: AWQ_MODES

    @property
    def bits(self) -> int | None:
        """MatMulNBits bits; None for int8-dynamic."""
        return BITS.get(self.precision)

    @property
    def run_device(self) -> str:
        """The device the calibration and check runs ask onnxruntime for."""
        return "auto" if self.device == "cuda" else "cpu"

    @property
    def float_run(self) -> bool:
        """Whether the float graph runs on the texts (check, GPTQ, SmoothQuant)."""
        return self.check or self.precision == "int8-dynamic" or self.method == "gptq"


def make_plan(precision: str, device: str, opts: QuantOptions, task: Task = EMBED) -> Plan:
    """Validate `opts` for `precision` on `device` and `task`, and fill in the defaults."""
    if precision not in QUANT_PRECISIONS:
        raise ValueError(f"{precision!r} is not a quantized precision ({QUANT_PRECISIONS})")
    base = base_precision(precision, device)
    gate = _gate(precision, opts, task)
    method = opts.method or DEFAULT_METHOD.get(precision, "rtn")
    if method not in METHODS:
        raise ValueError(f"quantization method must be one of {', '.join(METHODS)}, got {method!r}")
    if opts.symmetric is not None:
        symmetric = opts.symmetric
    else:  # zero points come from gptq's grid search; round-to-nearest is symmetric
        symmetric = DEFAULT_SYMMETRIC.get(precision, True) if method == "gptq" else True
    if not symmetric and method != "gptq":
        raise ValueError("asymmetric (zero-point) weights are made by the gptq method only")
    if task.input_format != "text" and (method != "rtn" or opts.calibration is not None):
        raise ValueError(
            f"--task {task.name} {precision} uses round-to-nearest symmetric blocks, checked on "
            f"built-in {task.unit}s (no --method gptq, no --calibration)"
        )
    awq = _awq(precision, method, opts)
    return Plan(precision, device, base, gate, method, symmetric, opts.check, opts.damp, awq)


def _awq(precision: str, method: str, opts: QuantOptions) -> str:
    """The AWQ mode: the option or the precision's default with GPTQ; only with GPTQ weights."""
    if opts.per_token is not None and opts.per_token not in PER_TOKEN_MODES:
        raise ValueError(
            f"per_token must be one of {', '.join(PER_TOKEN_MODES)}, got {opts.per_token!r}"
        )
    if opts.awq is not None and opts.awq not in AWQ_MODES:
        raise ValueError(f"awq must be one of {', '.join(AWQ_MODES)}, got {opts.awq!r}")
    if method != "gptq" or precision not in BITS:
        if opts.awq not in (None, "off"):
            raise ValueError(
                f"awq scales are made for --method gptq with int8 / int4 weights, not "
                f"{precision} with {method}"
            )
        return "off"
    return opts.awq or DEFAULT_AWQ.get(precision, "off")


def _gate(precision: str, opts: QuantOptions, task: Task) -> CosineCheck | LogOddsCheck:
    """The check of the task's metric (`tasks.Task.metric`) with its bars (`bars.py`)."""
    if task.metric == "cosine":
        if opts.max_logodds_diff is not None:
            raise ValueError(
                f"--max-logodds-diff is a rerank bar; --task {task.name} has --min-cosine"
            )
        return CosineCheck(BARS[precision] if opts.min_cosine is None else opts.min_cosine)
    if opts.min_cosine is not None:
        raise ValueError(
            f"--min-cosine is an embedding bar; --task {task.name} has --max-logodds-diff"
        )
    bar = LOGODDS_BARS[precision] if opts.max_logodds_diff is None else opts.max_logodds_diff
    if bar <= 0:
        raise ValueError(f"--max-logodds-diff must be > 0, got {bar}")
    return LogOddsCheck(bar, TOP3_OVERLAP_BARS[precision])


def nbits_settings(plan: Plan, opts: QuantOptions) -> dict[str, int]:
    """MatMulNBits' bits, block size and accuracy level (int8 / int4)."""
    assert plan.bits is not None
    level = opts.accuracy_level
    if level is None:
        level = CPU_ACCURACY_LEVEL if plan.device == "cpu" else 0
    block_size = opts.block_size or DEFAULT_BLOCK_SIZE[plan.precision]
    return {"bits": plan.bits, "block_size": block_size, "accuracy_level": level}
