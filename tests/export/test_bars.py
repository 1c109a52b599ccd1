"""One fidelity bar per precision (qexport/export/bars.py), read by the quantizer, the
validator's default thresholds and `qexport onnx --help`: the three must agree."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from qexport.export.bars import BARS, QUANT_PRECISIONS
from qexport.export.quantize import QuantOptions
from qexport.export.quantize.options import make_plan
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
    assert plan.bar == BARS[precision]
    assert make_plan(precision, "cpu", QuantOptions(min_cosine=0.5)).bar == 0.5
