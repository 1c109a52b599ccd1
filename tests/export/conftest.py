"""Shared by the export tests: a small random feed and a plain onnxruntime run of a graph."""

from __future__ import annotations

import numpy as np
import pytest


def run_embedding(path, feed):  # type: ignore[no-untyped-def]
    """`sentence_embedding` of the graph at `path` on `feed`, by onnxruntime alone (CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["sentence_embedding"], feed)[0]


@pytest.fixture(scope="module")
def feed():  # type: ignore[no-untyped-def]
    """Three rows of 48 random byte-token ids, two of them padded (30 and 5 real tokens)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (3, 48))
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}
