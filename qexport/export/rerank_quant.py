"""int8 for rerankers: weight-only MatMulNBits on the backbone's projections (the fp32 score
vector is a Mul + ReduceSum, never quantized), and a check on what a reranker is used for:
the scores and the order they give.

The float graph (fp32 for CPU, fp16 for CUDA) runs on the check pairs before quantizing; the
written int8 artifact runs on the same pairs. The export is refused when

* max |log-odds(int8) - log-odds(float)| over the pairs exceeds `max_logodds_diff`
  (default 0.3: the probability moves by at most 0.3 / 4 = 0.075 anywhere, and by at most
  0.015 where the score is confident (p < 0.05 or > 0.95), since dp = p (1 - p) d(log-odds)),
  or
* the mean top-3 overlap per query (int8 top 3 vs float top 3) is below `min_top3_overlap`
  (default 2/3: one of the three may swap with a near tie).

See docs/design.md, "Reranker", for the measured values these bars are set against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ..manifest import GRAPH_NAME
from ..runtime.batching import plan_batches
from ..runtime.reranker import PairEncoder
from ..runtime.session import create_session
from ..runtime.tokenize import pad_right
from ..texts import BUILTIN_TEXTS
from .artifact import save_graph
from .quantize import QuantizationRefused, base_precision, initializer_bytes
from .quantize.calibration import scratch_folder
from .quantize.matmul_nbits import apply_matmul_nbits
from .tokenizer_files import copy_tokenizer

if TYPE_CHECKING:
    from .api import ExportOptions

log = logging.getLogger("qexport")

MAX_LOGODDS_DIFF = 0.3
MIN_TOP3_OVERLAP = 2 / 3
CHECK_QUERIES = (
    "What is the capital of China?",
    "Explain gravity",
    "How do vaccines work?",
    "Which city is the capital of Japan?",
    "what does machine learning do",
    "Q3 revenue growth",
)
TOP_K = 3


def check_pairs() -> list[tuple[str, list[str]]]:
    """Each check query against every non-empty built-in text (multilingual, code, long)."""
    docs = [t for t in BUILTIN_TEXTS if t.strip()]
    return [(q, docs) for q in CHECK_QUERIES]


def run_logits(
    graph: Path, device: str, precision: str, rows: list[list[int]], pad: int
) -> np.ndarray:
    session = create_session(graph, device, precision)
    out = np.empty(len(rows), dtype=np.float64)
    for idx in plan_batches([len(r) for r in rows], 4096, 16):
        ids, mask = pad_right([rows[i] for i in idx], pad)
        (logit,) = session.run(["logit"], {"input_ids": ids, "attention_mask": mask})
        out[idx] = logit
    if not np.isfinite(out).all():
        raise FloatingPointError("the graph produced NaN/Inf log-odds on the check pairs")
    return out


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    k = min(k, len(a))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


@dataclass
class RerankQuantizer:
    device: str
    base: str
    block_size: int
    accuracy_level: int
    max_logodds_diff: float
    min_top3_overlap: float
    check_enabled: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    rows: list[list[int]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # documents per query
    pad: int = 0
    reference: np.ndarray | None = None

    @classmethod
    def for_options(cls, opts: ExportOptions) -> RerankQuantizer:
        q = opts.quant
        if q.method not in (None, "rtn") or q.symmetric is False:
            raise ValueError("--task rerank int8 uses round-to-nearest symmetric blocks only")
        base = base_precision("int8", opts.device)
        level = q.accuracy_level
        if level is None:
            level = 4 if opts.device == "cpu" else 0
        bar = MAX_LOGODDS_DIFF if opts.max_logodds_diff is None else opts.max_logodds_diff
        if bar <= 0:
            raise ValueError(f"--max-logodds-diff must be > 0, got {bar}")
        return cls(
            device=opts.device,
            base=base,
            block_size=q.block_size or 32,
            accuracy_level=level,
            max_logodds_diff=bar,
            min_top3_overlap=MIN_TOP3_OVERLAP,
            check_enabled=q.check,
        )

    @property
    def run_device(self) -> str:
        return "auto" if self.device == "cuda" else "cpu"

    def quantize(
        self,
        model: ir.Model,
        tokenizer_dir: Path,
        rerank: dict[str, Any],
        max_length: int,
        workdir: Path,
    ) -> int:
        """Run the float graph on the check pairs, then rewrite the projections in place;
        returns the quantized weight bytes."""
        self.info = {"base_precision": self.base, "device": self.device}
        if self.check_enabled:
            with scratch_folder(workdir) as scratch:
                copy_tokenizer(tokenizer_dir, scratch)
                encoder = PairEncoder(scratch, rerank, max_length)
                self.pad = int(rerank.get("pad_id", 0))
                for query, docs in check_pairs():
                    rows, _ = encoder.encode(query, docs)
                    self.rows.extend(rows)
                    self.groups.append(len(rows))
                save_graph(model, scratch, initializer_bytes(model), progress=False)
                self.reference = run_logits(
                    scratch / GRAPH_NAME, self.run_device, self.base, self.rows, self.pad
                )
        self.info.update(
            apply_matmul_nbits(
                model, bits=8, block_size=self.block_size, accuracy_level=self.accuracy_level
            )
        )
        self.info["unquantized"] = "embedding table, norms, attention, score vector (fp32)"
        return initializer_bytes(model)

    def check(self, folder: Path) -> None:
        """Run the written int8 artifact on the check pairs; refuse it when it drifts."""
        if self.reference is None:
            self.info["check"] = {"skipped": True}
            return
        got = run_logits(folder / GRAPH_NAME, self.run_device, self.base, self.rows, self.pad)
        diff = np.abs(got - self.reference)
        overlaps, start = [], 0
        for n in self.groups:
            sl = slice(start, start + n)
            overlaps.append(top_k_overlap(got[sl], self.reference[sl], TOP_K))
            start += n
        result = {
            "pairs": len(self.rows),
            "queries": len(self.groups),
            "reference": f"float graph ({self.base})",
            "max_abs_logodds_diff": round(float(diff.max()), 6),
            "mean_abs_logodds_diff": round(float(diff.mean()), 6),
            "top3_overlap_mean": round(float(np.mean(overlaps)), 6),
            "max_logodds_diff_bar": self.max_logodds_diff,
            "min_top3_overlap_bar": round(self.min_top3_overlap, 6),
        }
        self.info["check"] = result
        log.info(
            "check          max |d log-odds| %.5f, top-3 overlap %.3f vs the float graph (%d pairs)",
            result["max_abs_logodds_diff"],
            result["top3_overlap_mean"],
            result["pairs"],
        )
        if diff.max() > self.max_logodds_diff or np.mean(overlaps) < self.min_top3_overlap:
            raise QuantizationRefused(
                f"int8 refused: max |log-odds difference| {diff.max():.4f} vs the float graph "
                f"on {len(self.rows)} check pairs (bar {self.max_logodds_diff}), top-3 overlap "
                f"{np.mean(overlaps):.3f} (bar {self.min_top3_overlap:.3f}); use fp16 or fp32, "
                "or accept it with --max-logodds-diff"
            )
