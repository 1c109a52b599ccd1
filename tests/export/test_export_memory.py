"""Guard: the export streams weights, so its peak RSS stays near the BF16 weight size.

The 4B figures are in docs/benchmarks.md (bench/bench_export_memory.py); this guard runs the
same code path (external data, lazy tensors) on the 0.6B architecture so CI can afford it.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from qexport.export.source import resolve

BASELINE_GB = 0.4  # interpreter + numpy/onnx/onnx-ir/tokenizers, measured ~0.25 GB


@pytest.mark.slow
def test_export_peak_rss_bounded(tmp_path):
    model = "random:qwen3-embedding-0.6b"
    src = resolve(model)
    bf16_gb = sum(int(np.prod(src.weights.shape(k))) for k in src.weights.keys()) * 2 / 2**30
    out = tmp_path / "q06-fp16"
    proc = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "qexport.cli", "-q", "onnx", model, "-o", str(out),
         "--precision", "fp16", "--max-length", "4096"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_gb = (
        int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 2**20
    )
    assert (out / "model.onnx_data").is_file()  # streamed to external data
    bound = 1.6 * bf16_gb + BASELINE_GB
    assert peak_gb <= bound, (
        f"export peak RSS {peak_gb:.2f} GiB > {bound:.2f} GiB (BF16 weights {bf16_gb:.2f} GiB)"
    )
