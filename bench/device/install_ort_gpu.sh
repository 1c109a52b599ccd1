#!/usr/bin/env bash
# On the lent GPU machine: join the parts of onnxruntime-gpu carried in .ortgpu/pNN
# (bench/device/pack_ort_gpu.py made them), unpack into /tmp/ortgpu, and check that the CUDA
# provider really runs: a tiny random Qwen3 export, CUDA vs CPU.
# Use afterwards: export PYTHONPATH=/tmp/ortgpu:$PWD
set -euo pipefail
cd "$(dirname "$0")/../.."
# the parts: gpu_session.sh copies each carried .ortgpu/pNN/part to /tmp/keep/pNN
if [ ! -f /tmp/ortgpu/.complete ]; then
  rm -rf /tmp/ortgpu && mkdir -p /tmp/ortgpu
  cat /tmp/keep/p[0-9][0-9] | tar -xJ -C /tmp/ortgpu && touch /tmp/ortgpu/.complete
fi
export PYTHONPATH=/tmp/ortgpu:${PYTHONPATH:-$PWD}
python3 - <<'PY'
import tempfile, numpy as np, onnxruntime as ort
from qexport.export.api import ExportOptions, export_onnx
from qexport.runtime import Embedder
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
with tempfile.TemporaryDirectory() as d:
    export_onnx("random:qwen3-tiny", d + "/a", ExportOptions(precision="fp16", progress=False))
    texts = ["hello world", "a longer text about onnxruntime on a GPU " * 20]
    gpu, cpu = Embedder(d + "/a", device="cuda"), Embedder(d + "/a", device="cpu")
    a, b = gpu.embed(texts), cpu.embed(texts)
    print("providers", gpu.providers, "io_binding", gpu.io_binding)
    print("cuda vs cpu min cosine", float(np.sum(a * b, axis=1).min()))
PY
