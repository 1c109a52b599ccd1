"""The runtime install for apps on CPU (issue 30): `qexport[cpu]` in a fresh virtualenv holds
numpy, tokenizers and the CPU onnxruntime wheel (no torch, transformers, onnxruntime-gpu or
NVIDIA libraries), fits the size goal, and runs Embedder and Reranker with the same results as
the development install; without any onnxruntime, the runtime still imports and its first use
names the extras in one line (CLI: exit 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qexport.runtime import Embedder, Reranker
from tests.conftest import REPO, SHARED, need_shared

SIZE_GOAL_MB = 220  # site-packages of the runtime install on CPU, pip included
FORBIDDEN = ("torch", "transformers", "onnxruntime-gpu", "onnx", "sentence-transformers")
TEXTS = ["The capital of China is Beijing.", "Explain gravity", "日本の首都は東京です。"]
QUERY = "What is the capital of China?"

BLOCK_ORT = "import sys; sys.modules['onnxruntime'] = None; "  # `import onnxruntime` fails


def _site_mb(site: Path) -> float:
    total = 0
    for root, _, files in os.walk(site):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total / 2**20


def test_without_onnxruntime_the_runtime_imports_and_names_the_extras(tiny_artifact, tmp_path):
    code = BLOCK_ORT + (
        "from qexport.runtime import Embedder, Reranker\n"
        "try:\n"
        f"    Embedder({str(tiny_artifact)!r})\n"
        "except ImportError as exc:\n"
        "    print('ERR', exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "ERR onnxruntime is not installed: pip install 'qexport[cpu]'" in r.stdout, r.stdout
    assert "'qexport[gpu]'" in r.stdout
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n", encoding="utf-8")
    cli = BLOCK_ORT + "from qexport.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", cli, "embed", str(tiny_artifact), str(corpus)]
    r = subprocess.run([*argv, "-o", str(tmp_path / "o.npy")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "qexport: error: onnxruntime is not installed: pip install 'qexport[cpu]' (CPU), or "
        "'qexport[gpu]' on a machine with an NVIDIA GPU (never both)"
    ]


@pytest.mark.slow
def test_cpu_runtime_install_in_a_fresh_virtualenv(tiny_artifact, tmp_path):
    from qexport.export.api import ExportOptions, export_onnx

    tokenizer = need_shared(SHARED / "qwen3-reranker" / "0.6B")
    reranker = tmp_path / "rr"
    export_onnx(
        "random:qwen3-reranker-tiny", reranker, ExportOptions(progress=False, tokenizer=tokenizer)
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Python 3.12+ venvs hold pip alone; 3.10/3.11 add setuptools, which is no part of the install
    subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=False)
    src = tmp_path / "src"  # a copy without build outputs, as a user's checkout would be
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "out"))
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", f"{src}[cpu]"], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    listed = subprocess.run(
        [py, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "onnxruntime" in names and not names & set(FORBIDDEN), sorted(names)
    assert not any(n.startswith("nvidia-") for n in names), sorted(names)
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = _site_mb(site)
    print(f"\nruntime install on CPU: {size:.1f} MB of site-packages, {len(names)} packages")
    assert size <= SIZE_GOAL_MB, f"{size:.1f} MB: {sorted(names)}"

    script = (
        "import json, sys, numpy as np\n"
        "from qexport.runtime import Embedder, Reranker\n"
        "e = Embedder(sys.argv[1]); r = Reranker(sys.argv[2])\n"
        "print(json.dumps({'emb': e.embed(json.loads(sys.argv[3])).tolist(),\n"
        "    'rr': r.score(sys.argv[4], json.loads(sys.argv[3])).tolist(),\n"
        "    'providers': e.providers + r.providers}))\n"
        "try:\n"
        "    Embedder(sys.argv[1], device='cuda')\n"
        "except RuntimeError as exc:\n"
        "    print(exc, file=sys.stderr)\n"
    )
    run = subprocess.run(
        [py, "-c", script, str(tiny_artifact), str(reranker), json.dumps(TEXTS), QUERY],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: the installed package is what runs
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # no provider noise on a CPU machine; device="cuda" on the CPU wheel names the GPU extra
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "this onnxruntime has no CUDA provider" in lines[0], run.stderr
    assert lines[0].endswith("install the GPU build: pip install 'qexport[gpu]'"), run.stderr
    got = json.loads(run.stdout)
    assert set(got["providers"]) == {"CPUExecutionProvider"}
    want_emb = Embedder(tiny_artifact, device="cpu").embed(TEXTS)
    want_rr = Reranker(reranker, device="cpu").score(QUERY, TEXTS)
    np.testing.assert_allclose(np.array(got["emb"]), want_emb, atol=1e-5)
    np.testing.assert_allclose(np.array(got["rr"]), want_rr, atol=1e-5)
