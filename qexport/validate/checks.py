"""The checks of `qexport validate` as data: each task's module (`checks_embed`,
`checks_rerank`) lists `Check`s that say where a metric sits in the report; `evaluate` turns
them into the report's check rows (metric, value, threshold, pass/fail/info/skipped, detail)
with the task's thresholds (`thresholds.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .thresholds import ALL_KEYS, Thresholds, passes

Detail = Callable[[dict[str, Any]], Any]


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
    value = None if "skipped" in s else s.get(check.field)
    if check.finite_of:
        return {
            "name": "finite",
            "meaning": f"no NaN/Inf in any {check.finite_of}",
            "value": value,
            "comparison": "==",
            "threshold": 0,
            "status": "pass" if value == 0 else "fail",
            "detail": check.detail(s) if value and check.detail else None,
        }
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
