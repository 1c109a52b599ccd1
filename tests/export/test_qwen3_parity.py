"""Parity of the exported Qwen3 graph with the official recipe in PyTorch (transformers, left
padding, last_token_pool, F.normalize), on random weights of the exact architecture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.random import REGISTRY
from qexport.runtime import Embedder
from qexport.validate.reference import TorchReference
from tests.conftest import QWEN_06B, cosines, need_shared
from tests.texts import MIXED


def test_tiny_fp32_matches_transformers(tiny_artifact, tiny_reference):
    emb = Embedder(tiny_artifact, device="cpu")
    lengths = [len(x) for x in emb.encoder.encode(MIXED).ids]
    assert min(lengths) <= 2 and max(lengths) >= 300, lengths  # 1 token .. several hundred
    ours = emb.embed(MIXED, batch_size=len(MIXED))  # one batch, mixed lengths, right padding
    ref = tiny_reference.embed(MIXED, batch_size=len(MIXED))  # one batch, left padding
    cos = cosines(ours, ref)
    assert cos.min() >= 0.99999, cos
    # the check means something only if different texts give different vectors
    sim = ours @ ours.T
    assert sim[~np.eye(len(MIXED), dtype=bool)].max() < 0.99


def test_batch_equals_single(tiny_artifact):
    emb = Embedder(tiny_artifact, device="cpu")
    batch = emb.embed(MIXED, batch_size=len(MIXED))
    single = np.concatenate([emb.embed([t]) for t in MIXED])
    assert np.abs(batch - single).max() <= 1e-5


def test_instruction_matches_reference(tiny_artifact, tiny_reference):
    task = "Given a web search query, retrieve relevant passages that answer the query"
    queries = ["What is the capital of China?", "Explain gravity"]
    ours = Embedder(tiny_artifact, device="cpu").embed(queries, instruction=task)
    ref = tiny_reference.embed(queries, instruction=task)
    assert cosines(ours, ref).min() >= 0.99999


def test_token_embeddings_output(tiny_artifact, tiny_reference):
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(
        str(tiny_artifact / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    enc = Embedder(tiny_artifact, device="cpu").encoder.encode(MIXED[:3])
    from qexport.runtime.tokenize import pad_right

    ids, mask = pad_right(enc.ids)
    _sent, tok = sess.run(
        ["sentence_embedding", "token_embeddings"], {"input_ids": ids, "attention_mask": mask}
    )
    assert tok.shape == (*ids.shape, 128)
    with torch.no_grad():
        ref = tiny_reference.model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state
    m = mask.astype(bool)
    np.testing.assert_allclose(tok[m], ref.numpy()[m], atol=2e-4, rtol=1e-3)
    assert np.all(tok[~m] == 0)


def test_registry_matches_published_configs():
    """random:qwen3-embedding-* carry exactly the published dimensions."""
    root = need_shared(QWEN_06B.parent)
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta",
            "max_position_embeddings", "tie_word_embeddings")  # fmt: skip
    for size in ("0.6B", "4B", "8B"):
        real = json.loads((root / size / "config.json").read_text())
        ours = REGISTRY[f"qwen3-embedding-{size.lower()}"].config
        assert {k: ours[k] for k in keys} == {k: real[k] for k in keys}, size


@pytest.mark.slow
def test_real_06b_config_with_real_tokenizer(tmp_path, qwen_tokenizer_dir):
    """The full 28-layer 0.6B architecture (2.4 GB fp32: external data) with the real tokenizer."""
    out = tmp_path / "q06"
    export_onnx("random:qwen3-embedding-0.6b", out,
                ExportOptions(progress=False, tokenizer=qwen_tokenizer_dir, max_length=8192))  # fmt: skip
    assert (out / "model.onnx_data").stat().st_size > 2e9
    texts = MIXED[:6]
    task = "Given a web search query, retrieve relevant passages that answer the query"
    emb = Embedder(out, device="cpu")
    ours = np.concatenate([emb.embed(texts), emb.embed(texts[:2], instruction=task)])
    ref = TorchReference("random:qwen3-embedding-0.6b", tokenizer=qwen_tokenizer_dir)
    theirs = np.concatenate([ref.embed(texts), ref.embed(texts[:2], instruction=task)])
    cos = cosines(ours, theirs)
    assert cos.min() >= 0.99999, cos
