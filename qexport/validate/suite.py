"""`run_validation`: one suite for every task. The artifact's manifest names its task
(`qexport.tasks`); the task's module (`SUITES`: `checks_embed`, `checks_rerank`) measures the
artifact against its PyTorch reference and lists its checks as data; the speed harness
(`speed.py`) and the thresholds table (`thresholds.py`) serve both tasks.

The report (schema `REPORT_SCHEMA` v`REPORT_SCHEMA_VERSION`) holds the task, the artifact, the
reference, the task's metric sections (embed: fidelity, retrieval; rerank: pairs,
agreement), speed, the checks (metric, value, threshold, pass/fail, and what failed), the
thresholds used, the environment and notes. `report.py` writes it as json, Markdown and HTML.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import warnings
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

from ..manifest import load_manifest
from ..tasks import get_task
from . import checks_embed, checks_rerank
from .checks import Measured, ValidateOptions, evaluate
from .environment import collect
from .thresholds import default_thresholds

log = logging.getLogger("qexport")

REPORT_SCHEMA = "qexport.validate.report"
REPORT_SCHEMA_VERSION = 2  # 2: one report for every task ("task"), speed over token rows
# task name -> its module: CHECKS (list of checks.Check), measure(), summary()
SUITES: dict[str, ModuleType] = {"embed": checks_embed, "rerank": checks_rerank}
__all__ = ["Measured", "ValidateOptions", "run_validation", "summary"]


def run_validation(artifact: str | Path, opts: ValidateOptions) -> dict[str, Any]:
    """Run every check of the artifact's task; warnings (e.g. truncation of long texts) go
    into the report's notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _run(Path(artifact), opts)
    kinds: dict[str, list[str]] = {}  # same message up to its numbers -> occurrences
    for w in caught:
        if issubclass(w.category, UserWarning):
            msg = str(w.message)
            kinds.setdefault(re.sub(r"\d+", "N", msg), []).append(msg)
    for msgs in list(kinds.values())[:10]:
        more = f" (and {len(msgs) - 1} similar warning(s))" if len(msgs) > 1 else ""
        report["notes"].append(f"warning: {msgs[0]}{more}")
    return report


def _run(artifact: Path, opts: ValidateOptions) -> dict[str, Any]:
    manifest = load_manifest(artifact, verify=True)
    task = get_task(manifest.task)
    suite = SUITES[task.name]
    thresholds = {**default_thresholds(manifest.precision, task.name), **opts.thresholds}
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "task": task.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "path": str(artifact),
            "task": task.name,
            "source": manifest.source,
            "precision": manifest.precision,
            "quantization": manifest.quantization,
            "max_length": manifest.max_length,
            "architecture": manifest.architecture,
        },
        "thresholds": thresholds,
    }
    with ExitStack() as stack:
        log.info("validate: %s checks against %s", task.name, opts.reference)
        got: Measured = suite.measure(artifact, manifest, opts, stack)
        report["artifact"].update(got.parts.pop("artifact", {}))
        report.update(got.parts)
        env = collect(got.providers, got.reference_device)
        report["speed"] = None
        if opts.speed:
            report["speed"] = _speed(artifact, opts, got, env)
    report["environment"] = env
    report["checks"] = evaluate(suite.CHECKS, report, thresholds)
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    report["verdict"] = "fail" if failed else "pass"
    report["failed"] = failed
    report["notes"] = got.notes
    return report


def _speed(
    artifact: Path, opts: ValidateOptions, got: Measured, env: dict[str, Any]
) -> dict[str, Any]:
    from .speed import run_speed

    log.info("validate: speed grid %s x %s", opts.batch_sizes, opts.lengths or "default")
    return run_speed(
        artifact,
        got.speed_reference,
        device=opts.device,
        batch_sizes=opts.batch_sizes,
        lengths=opts.lengths,
        repeats=opts.repeats,
        warmup=opts.warmup,
        pool=opts.texts if opts.texts_source != "built-in" else None,
        progress=opts.progress,
        gpu_name=env["gpus"][0] if env["gpus"] else None,
        encoder=got.encoder,
    )


def summary(report: dict[str, Any]) -> list[str]:
    """One line per section that ran: the task's own, then speed."""
    lines: list[str] = SUITES[report["task"]].summary(report)
    sp = report.get("speed")
    if sp:
        best = max(sp["grid"], key=lambda g: g["onnxruntime"]["tokens_per_s"])
        o = best["onnxruntime"]
        lines.append(
            f"speed: up to {o['tokens_per_s']:.0f} tokens/s, {o['rows_per_s']:.1f} "
            f"{sp['unit']}s/s (batch {best['batch_size']}, length {best['length']}, "
            f"{','.join(sp['providers'])}), {best['speedup']:.2f}x PyTorch there"
        )
    return lines
