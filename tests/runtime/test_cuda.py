"""The CUDA provider: run where onnxruntime really gets CUDA, skipped elsewhere with the reason
(CI has no GPU). On a GPU machine: `python -m pytest -q tests/runtime/test_cuda.py`
(bench/device/gpu_session.sh `t` runs it on a lent H100).

Each artifact's CUDA vectors are compared with the same weights run independently: the fp32
artifact on the CPU provider, and transformers in PyTorch fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.quantize import QuantOptions
from qexport.runtime import Embedder
from qexport.runtime.session import DeviceError
from qexport.texts import BUILTIN_TEXTS
from tests.conftest import cosines

MODEL = "random:qwen3-stress"  # residuals above fp16's max: the hard case for 16-bit floats
TEXTS = list(BUILTIN_TEXTS)


@pytest.fixture(scope="module")
def cuda_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cuda")
    fp32 = root / "fp32"
    export_onnx(MODEL, fp32, ExportOptions(progress=False, max_length=1024))
    try:
        Embedder(fp32, device="cuda")
    except DeviceError as exc:
        pytest.skip(f"no CUDA here: {exc}")
    out = {"fp32": fp32}
    for precision in ("fp16", "bf16", "int8", "int4"):
        out[precision] = root / precision
        opts = ExportOptions(
            precision=precision, device="cuda", max_length=1024, progress=False,
            quant=QuantOptions(),
        )  # fmt: skip
        export_onnx(MODEL, out[precision], opts)
    return out


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from qexport.validate.reference import TorchReference

    return TorchReference(MODEL, max_length=1024).embed(TEXTS)


def test_cuda_fp32_equals_cpu_and_pytorch(cuda_artifacts, reference):
    gpu = Embedder(cuda_artifacts["fp32"], device="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.io_binding
    on_gpu = gpu.embed(TEXTS)
    on_cpu = Embedder(cuda_artifacts["fp32"], device="cpu").embed(TEXTS)
    assert cosines(on_gpu, on_cpu).min() >= 0.99999
    assert cosines(on_gpu, reference).min() >= 0.99999


def test_io_binding_changes_nothing(cuda_artifacts):
    bound = Embedder(cuda_artifacts["fp16"], device="cuda", io_binding=True).embed(TEXTS)
    plain = Embedder(cuda_artifacts["fp16"], device="cuda", io_binding=False).embed(TEXTS)
    np.testing.assert_allclose(bound, plain, atol=1e-6)


@pytest.mark.parametrize(
    ("precision", "bar"), [("fp16", 0.999), ("bf16", 0.999), ("int8", 0.995), ("int4", 0.98)]
)
def test_cuda_precisions_hold_their_bars_vs_pytorch(cuda_artifacts, reference, precision, bar):
    emb = Embedder(cuda_artifacts[precision], device="cuda")
    assert emb.providers[0] == "CUDAExecutionProvider"
    out = emb.embed(TEXTS)
    assert np.isfinite(out).all()
    assert cosines(out, reference).min() >= bar
