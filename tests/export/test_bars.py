"""One fidelity bar per task and precision (qexport/export/bars.py), read by the quantizer,
the validator's default thresholds and `qexport onnx --help`: they must agree, for every task
(embed cosine; rerank log-odds and top-3 overlap)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from qexport.export.bars import BARS, QUANT_PRECISIONS, TASK_BARS
from qexport.export.quantize import QuantOptions
from qexport.export.quantize.options import make_plan
from qexport.tasks import TASKS
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
    assert plan.bar == BARS[precision]
    assert make_plan(precision, "cpu", QuantOptions(min_cosine=0.5)).bar == 0.5
