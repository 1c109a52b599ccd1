"""The session options every qexport session gets (docs/design.md, "Memory at run time")."""

from __future__ import annotations

import onnxruntime as ort

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
