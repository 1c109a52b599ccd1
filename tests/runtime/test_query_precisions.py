"""The precisions docs/design.md recommends for CPU (fp32; int8 for queries; int8-dynamic for
corpora), on the query path: real SciFact queries of at most 32 tokens (real Qwen3 tokenizer),
embedded one at a time at 2 threads as an app does, with and without the model card's query
instruction, against the same weights in PyTorch fp32 (transformers, the model card's recipe).

Model: random:qwen3-stress (4 layers, massive residual activations: the hard case for int8
activations). Bars: the package's own table (BARS); fp32 must agree to 1e-5.
bench/bench_query_latency.py measures the same on the 0.6B shape (docs/benchmarks.md, issue 20).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.quantize import BARS
from qexport.runtime import Embedder
from qexport.util import row_cosines
from qexport.validate.reference import TorchReference
from tests.conftest import SHARED, need_shared

MODEL = "random:qwen3-stress"
MAX_TOKENS = 32
N_QUERIES = 6
FP32_BAR = 0.99999


@pytest.fixture(scope="module")
def queries(qwen_tokenizer_dir):  # type: ignore[no-untyped-def]
    """The first SciFact queries of at most MAX_TOKENS tokens (counted by the real tokenizer)."""
    from tokenizers import Tokenizer

    path = need_shared(SHARED / "data" / "scifact" / "queries.jsonl")
    tok = Tokenizer.from_file(str(qwen_tokenizer_dir / "tokenizer.json"))
    with open(path, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    short = [t for t in texts if len(tok.encode(t).ids) < MAX_TOKENS]  # + the EOS the model adds
    assert len(short) >= N_QUERIES
    return short[:N_QUERIES]


@pytest.fixture(scope="module")
def reference(qwen_tokenizer_dir, queries):  # type: ignore[no-untyped-def]
    """PyTorch fp32 embeddings of each query alone: (plain, with the query instruction)."""
    ref = TorchReference(MODEL, tokenizer=qwen_tokenizer_dir)
    task = ref.src.head.default_instruction
    assert task
    plain = np.concatenate([ref.embed([q]) for q in queries])
    instructed = np.concatenate([ref.embed([q], instruction=task) for q in queries])
    return plain, instructed, task


@pytest.mark.parametrize("precision", ["fp32", "int8", "int8-dynamic"])
def test_one_query_at_a_time_vs_pytorch(
    tmp_path, qwen_tokenizer_dir, queries, reference, precision
):
    out = tmp_path / precision
    export_onnx(
        MODEL, out, ExportOptions(precision=precision, tokenizer=qwen_tokenizer_dir, progress=False)
    )
    emb = Embedder(out, device="cpu", threads=2)
    plain, instructed, task = reference
    ours = np.concatenate([emb.embed([q]) for q in queries])
    ours_instructed = np.concatenate([emb.embed([q], instruction=task) for q in queries])
    bar = FP32_BAR if precision == "fp32" else BARS[precision]
    cos = row_cosines(np.concatenate([ours, ours_instructed]), np.concatenate([plain, instructed]))
    assert np.isfinite(cos).all() and cos.min() >= bar, (precision, cos.min())
    if precision != "fp32":  # it did quantize: not the float result
        assert cos.max() < 1 - 1e-7, cos.max()
    # a few queries in one call give the same vectors as one at a time (padding is inert)
    batch = emb.embed(queries[:4])
    assert row_cosines(batch, ours[:4]).min() > 0.99999
