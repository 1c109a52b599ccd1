"""A 32,768-token pair on CPU in linear memory (tiny shape, exported with 40,960 positions).

Measured (shared 2-core machine): 258 MB RSS after loading, 341 MB peak while scoring the
32,768-token pair, ~11 s. Materialised attention scores alone would be 32,768^2 x 3 heads x
4 bytes = 12.9 GB; the [seq, vocab] logits of the card's recipe 19.9 GB."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from qexport.export.api import ExportOptions, export_onnx

SCRIPT = Path(__file__).with_name("run_long_pair.py")


def _run(artifact: Path, tokens: int) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(artifact), str(tokens)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~11-28 s on the shared 2-core machine
def test_32k_pair_linear_memory(rerank_ckpt, tmp_path):
    out = tmp_path / "long"
    export_onnx(str(rerank_ckpt), out, ExportOptions(progress=False, max_length=40960))
    long = _run(out, 32768)
    assert long["tokens"] == 32768 and math.isfinite(long["logit"])
    grown = long["peak_rss_mb"] - long["rss_after_load_mb"]
    print(f"32,768 tokens: peak RSS {long['peak_rss_mb']:.0f} MB (+{grown:.0f} MB), "
          f"{long['seconds']:.1f} s")  # fmt: skip
    # linear: a few [seq, ffn] fp32 buffers (32,768 x 160 x 4 B = 21 MB each)
    assert grown < 400, long
