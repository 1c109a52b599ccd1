"""One fidelity bar per task and precision (qexport/export/bars.py), read by the quantizer,
the validator's default thresholds and `qexport onnx --help`: they must agree, for every task
(embed cosine; rerank log-odds and top-3 overlap)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from qexport.export.bars import (
    BARS,
    LOGODDS_BARS,
    QUANT_PRECISIONS,
    TASK_BARS,
    TOP3_OVERLAP_BARS,
)
from qexport.export.quantize import QuantOptions
from qexport.export.quantize.check import LogOddsCheck
from qexport.export.quantize.options import make_plan
from qexport.tasks import RERANK, TASKS
from qexport.validate.thresholds import KEYS, default_thresholds, parse_overrides


def test_cli_help_states_the_bars() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qexport.cli", "onnx", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = " ".join(out.split())  # argparse wraps lines
    stated = dict(
        (p, float(v)) for v, p in re.findall(r"(0\.\d+) (int8-dynamic|int8|int4)\b", text)
    )
    assert stated == {p: BARS[p] for p in QUANT_PRECISIONS}, text


@pytest.mark.parametrize("precision", list(BARS))
def test_validator_defaults_are_the_bars(precision: str) -> None:
    assert default_thresholds(precision)["cosine_min"] == BARS[precision]


CASES = [(t, key, p) for t, bars in TASK_BARS.items() for key in bars for p in bars[key]]


@pytest.mark.parametrize(("task", "key", "precision"), CASES)
def test_validator_defaults_are_the_bars_of_every_task(task: str, key: str, precision: str) -> None:
    """Every bar of every task is the validator's default for its key (the rerank bars
    included: log-odds and top-3 overlap)."""
    assert key in KEYS[task]
    assert default_thresholds(precision, task)[key] == TASK_BARS[task][key][precision]


def test_every_task_has_bars_and_defaults_for_its_precisions() -> None:
    assert set(TASK_BARS) == set(TASKS) == set(KEYS)
    assert {k for t in ("embed", "rerank") for k in TASK_BARS[t]} >= {
        "cosine_min", "logodds_max_diff", "top3_overlap_min"}  # fmt: skip
    for name, task in TASKS.items():
        for bars in TASK_BARS[name].values():
            assert set(bars) == set(task.precisions), name
        for precision in task.precisions:  # every key has a default (None: report only)
            assert set(default_thresholds(precision, name)) == set(KEYS[name])
    with pytest.raises(ValueError, match="no default thresholds for a rerank artifact of"):
        default_thresholds("int4", "rerank")


def test_overrides_are_checked_against_the_artifacts_task() -> None:
    assert parse_overrides("top3_overlap_min=0.5,spearman-min=none", "rerank") == {
        "top3_overlap_min": 0.5, "spearman_min": None}  # fmt: skip
    with pytest.raises(ValueError, match=r"'top3_overlap_min' for an embedding artifact \(it is"):
        parse_overrides("top3_overlap_min=0.5")
    with pytest.raises(ValueError, match=r"for a rerank artifact; known: logodds_max_diff, spe"):
        parse_overrides("nope=1", "rerank")


@pytest.mark.parametrize("precision", QUANT_PRECISIONS)
def test_quantizer_defaults_to_the_bar(precision: str) -> None:
    plan = make_plan(precision, "cpu", QuantOptions())
    assert plan.gate.bar == BARS[precision]  # type: ignore[union-attr]
    assert make_plan(precision, "cpu", QuantOptions(min_cosine=0.5)).gate.bar == 0.5  # type: ignore[union-attr]


def test_rerank_quantizer_defaults_to_the_rerank_bars() -> None:
    """The rerank int8 export check reads the same table as the validator (LOGODDS_BARS,
    TOP3_OVERLAP_BARS); --max-logodds-diff overrides the log-odds bar, and the embedding
    bar is refused for a reranker (and the other way round)."""
    gate = make_plan("int8", "cpu", QuantOptions(), RERANK).gate
    assert gate == LogOddsCheck(LOGODDS_BARS["int8"], TOP3_OVERLAP_BARS["int8"])
    tight = make_plan("int8", "cpu", QuantOptions(max_logodds_diff=0.01), RERANK).gate
    assert tight == LogOddsCheck(0.01, TOP3_OVERLAP_BARS["int8"])
    with pytest.raises(ValueError, match="--min-cosine is an embedding bar"):
        make_plan("int8", "cpu", QuantOptions(min_cosine=0.9), RERANK)
    with pytest.raises(ValueError, match="--max-logodds-diff is a rerank bar"):
        make_plan("int8", "cpu", QuantOptions(max_logodds_diff=0.1))
    with pytest.raises(ValueError, match="round-to-nearest"):
        make_plan("int8", "cpu", QuantOptions(method="gptq"), RERANK)


def test_every_task_has_its_head_bars_and_record() -> None:
    """Per-task tables are keyed by the one list of task names (qexport/tasks.py)."""
    from qexport.export.heads import HEADS
    from qexport.export.quantize.pipeline import UNQUANTIZED
    from qexport.export.random import REGISTRY
    from qexport.tasks import TASK_NAMES, TASKS

    assert set(HEADS) == set(TASK_BARS) == set(UNQUANTIZED) == set(TASK_NAMES)
    assert {m.task for m in REGISTRY.values()} == set(TASK_NAMES)
    for name, task in TASKS.items():  # every precision a task exports in has its bars
        for table in TASK_BARS[name].values():
            assert set(task.precisions) <= set(table), (name, task.precisions)
