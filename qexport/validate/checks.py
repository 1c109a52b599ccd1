"""The suite's data types: its options (`ValidateOptions`), what a task's `measure` hands back
(`Measured`), and the checks as data: each task's module (`checks_embed`, `checks_rerank`)
lists `Check`s that say where a metric sits in the report; `evaluate` turns them into the
report's check rows (metric, value, threshold, pass/fail/info/skipped, detail) with the
task's thresholds (`thresholds.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .thresholds import ALL_KEYS, Thresholds, passes

Detail = Callable[[dict[str, Any]], Any]


@dataclass
class ValidateOptions:
    reference: str
    texts: list[str] | None = None  # embed
    texts_source: str = "built-in"
    dataset: str | Path | None = None
    max_corpus: int | None = None  # embed
    max_queries: int | None = None  # rerank: 10 when None
    docs_per_query: int = 10  # rerank
    batch_size: int = 8  # rerank: pairs per pass in the agreement check
    device: str = "auto"
    thresholds: Thresholds = field(default_factory=dict)
    speed: bool = True
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    lengths: tuple[int, ...] | None = None  # None: the task's default (speed.DEFAULT_LENGTHS)
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    progress: bool = False
    force_known_answer: str | None = None  # tests: run the card check on any artifact


@dataclass
class Measured:
    """What a task's `measure` hands back to the suite."""

    parts: dict[str, Any]  # report sections (an "artifact" entry adds task-specific fields)
    providers: list[str]  # onnxruntime providers the artifact ran on
    reference_device: str
    encoder: Any  # the runtime's tokeniser (speed.py builds its token rows with it)
    speed_reference: str  # what the speed run's PyTorch engine loads
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """`name` (a threshold key, or "finite") reads `field` of the report section at `path`.

    A section holding "skipped" (with the reason) makes the check skipped; an `optional`
    section that did not run (None: no --dataset) leaves the check out. `detail` picks what a
    failure should show from the section. `finite` checks hold their value against 0 instead
    of a threshold."""

    name: str
    path: tuple[str, ...]
    field: str
    detail: Detail | None = None
    optional: bool = False
    finite_of: str = ""  # "embedding" / "pair": a NaN/Inf count, required to be 0


def keys(*names: str, **renamed: str) -> Detail:
    """A detail of the section's own keys (`renamed`: detail key -> section key); the section's
    "skipped" reason when it has none of them."""

    def pick(s: dict[str, Any]) -> Any:
        got = {k: s[k] for k in names if k in s} | {k: s[v] for k, v in renamed.items() if v in s}
        return got or s.get("skipped")

    return pick


def finite(path: tuple[str, ...], of: str, indices: str) -> Check:
    """No NaN/Inf: the section's "nonfinite" count must be 0 (detail: the `indices` key)."""
    return Check("finite", path, "nonfinite", keys(indices=indices), finite_of=of)


def _section(report: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    s: Any = report
    for p in path:
        s = s.get(p) if isinstance(s, dict) else None
    return s


def _row(check: Check, s: dict[str, Any], thresholds: Thresholds) -> dict[str, Any]:
    if check.finite_of:  # the count is there even when the rest was skipped because of it
        count = s.get(check.field)
        return {
            "name": "finite",
            "meaning": f"no NaN/Inf in any {check.finite_of}",
            "value": count,
            "comparison": "==",
            "threshold": 0,
            "status": "skipped" if count is None else ("pass" if count == 0 else "fail"),
            "detail": check.detail(s) if count and check.detail else None,
        }
    value = None if "skipped" in s else s.get(check.field)
    op, meaning = ALL_KEYS[check.name]
    threshold = thresholds.get(check.name)
    if value is None:
        status = "skipped"
    elif threshold is None:
        status = "info"
    else:
        status = "pass" if passes(check.name, value, threshold) else "fail"
    return {
        "name": check.name,
        "meaning": meaning,
        "value": value,
        "comparison": op,
        "threshold": threshold,
        "status": status,
        "detail": check.detail(s) if check.detail else None,
    }


def evaluate(
    checks: list[Check], report: dict[str, Any], thresholds: Thresholds
) -> list[dict[str, Any]]:
    """The report's check rows, in the order of `checks`."""
    rows = []
    for check in checks:
        s = _section(report, check.path)
        if s is None and check.optional:
            continue
        rows.append(_row(check, s or {"skipped": "not measured"}, thresholds))
    return rows
