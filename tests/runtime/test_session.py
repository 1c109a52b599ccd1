"""The session options every qexport session gets (docs/design.md, "Memory at run time")."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from qexport.runtime import Embedder
from qexport.runtime.session import session_options


def _check(opts: ort.SessionOptions) -> None:
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.enable_mem_reuse is False  # free each tensor after its last consumer
    assert opts.enable_mem_pattern is False  # no whole-plan block on a repeated shape
    assert opts.enable_cpu_mem_arena is True  # short-text throughput, no glibc heap bloat


def test_session_options_memory_policy():
    _check(session_options())
    assert session_options(threads=3).intra_op_num_threads == 3


def test_embedder_session_uses_them(tiny_artifact):
    emb = Embedder(tiny_artifact, device="cpu", threads=1)
    _check(emb.session.get_session_options())
    assert emb.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("value", ["abc", "-1", "2.5", "99999"])
def test_bad_qexport_threads_names_the_variable(monkeypatch, value):
    from qexport.runtime.session import session_options

    monkeypatch.setenv("QEXPORT_THREADS", value)
    with pytest.raises(ValueError, match="QEXPORT_THREADS must be a thread count"):
        session_options()


def test_qexport_threads_sets_the_session(monkeypatch):
    from qexport.runtime.session import session_options

    monkeypatch.setenv("QEXPORT_THREADS", "1")
    assert session_options().intra_op_num_threads == 1


def test_auto_on_a_machine_without_a_gpu_is_silent(tiny_artifact, tmp_path):
    """Issue 27 item 9 / issue 30: device='auto' asks the CUDA provider only when the driver
    reports a GPU; elsewhere a command's stderr holds no onnxruntime provider lines."""
    import subprocess
    import sys

    from qexport.runtime.session import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("a GPU is present: auto takes it")  # never on CI
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\nworld\n", encoding="utf-8")
    argv = [sys.executable, "-m", "qexport.cli", "-q", "embed", str(tiny_artifact), str(corpus)]
    r = subprocess.run([*argv, "-o", str(tmp_path / "o.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
