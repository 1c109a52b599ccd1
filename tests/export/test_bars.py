"""One fidelity bar per precision (qexport/export/bars.py), read by the quantizer, the
validator's default thresholds and `qexport onnx --help`: the three must agree."""

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
from qexport.tasks import RERANK
from qexport.validate.thresholds import default_thresholds


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
