"""XLM-RoBERTa (bge-m3 / multilingual-e5 shape) against sentence-transformers in PyTorch, on a
random checkpoint written as the hub ships it (sharded bf16 safetensors, a Unigram tokenizer
trained in-process with XLM-R's special tokens, the sentence-transformers folder files)."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.random import write_checkpoint as write_folder
from qexport.runtime import Embedder
from qexport.runtime.tokenize import pad_right
from tests.conftest import cosines
from tests.texts import MIXED

TEXTS = [*MIXED, "  leading, trailing   and repeated\tspaces\n "]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder("xlm-roberta-tiny", tmp_path_factory.mktemp("ckpt") / "xlmr")


def _st(folder: Path):  # type: ignore[no-untyped-def]
    import torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})


@pytest.fixture(scope="module")
def st_model(folder):  # type: ignore[no-untyped-def]
    return _st(folder)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, folder) -> Path:
    out = tmp_path_factory.mktemp("art") / "xlmr-fp32"
    export_onnx(str(folder), out, ExportOptions(progress=False, token_embeddings=True))
    return out


def test_checkpoint_layout(folder):
    """What the fixture writes is what the hub ships: shards + index, XLM-R's special ids."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert "embeddings.position_embeddings.weight" in index["weight_map"]
    tok = json.loads((folder / "tokenizer.json").read_text())
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert {k: special[k] for k in ("<s>", "<pad>", "</s>", "<unk>")} == {
        "<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3,
    }  # fmt: skip


def test_graph(artifact):
    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    ops = collections.Counter((n.domain or "ai.onnx", n.op_type) for n in model.graph.node)
    assert ops[("com.microsoft", "MultiHeadAttention")] == 2
    # no key padding mask: the CPU kernel's flash path (padding is an extra head channel)
    for node in model.graph.node:
        if node.op_type == "MultiHeadAttention":
            assert len(node.input) == 3, node.input
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    manifest = json.loads((artifact / "qexport.json").read_text())
    assert (manifest["pooling"], manifest["normalize"], manifest["max_length"]) == (
        "cls",
        True,
        8192,
    )


def test_fp32_matches_sentence_transformers(artifact, st_model):
    emb = Embedder(artifact, device="cpu")
    # tokenised alike (whitespace included: see xlm_roberta.whitespace_split)
    assert emb.encoder.encode(TEXTS).ids == st_model.tokenizer(TEXTS)["input_ids"]
    ours = emb.embed(TEXTS, batch_size=len(TEXTS))
    ref = st_model.encode(TEXTS, batch_size=len(TEXTS))
    assert cosines(ours, ref).min() >= 0.99999, cosines(ours, ref)
    sim = ours @ ours.T  # different texts give different vectors
    assert sim[~np.eye(len(TEXTS), dtype=bool)].max() < 0.99


def test_backbone_matches_transformers(artifact, folder):
    """token_embeddings == XLMRobertaModel's last_hidden_state on a right-padded batch."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    enc = Embedder(artifact, device="cpu").encoder.encode(TEXTS[:4])
    ids, mask = pad_right(enc.ids)
    sess = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    (tok,) = sess.run(["token_embeddings"], {"input_ids": ids, "attention_mask": mask})
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(np.where(mask == 1, ids, 1)),
                    attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()  # fmt: skip
    m = mask.astype(bool)
    np.testing.assert_allclose(tok[m], ref[m], atol=2e-4, rtol=1e-3)


def test_batch_equals_single(artifact):
    emb = Embedder(artifact, device="cpu", max_batch_tokens=10**6)  # one padded batch
    batch = emb.embed(TEXTS, batch_size=len(TEXTS))
    single = np.concatenate([emb.embed([t]) for t in TEXTS])
    assert np.abs(batch - single).max() <= 1e-5


def test_fp16_matches_sentence_transformers(tmp_path, folder, st_model):
    out = tmp_path / "xlmr-fp16"
    export_onnx(str(folder), out, ExportOptions(precision="fp16", progress=False))
    ours = Embedder(out, device="cpu").embed(TEXTS, batch_size=len(TEXTS))
    ref = st_model.encode(TEXTS, batch_size=len(TEXTS))
    assert cosines(ours, ref).min() >= 0.999


def test_random_spec_resolves(tmp_path, artifact):
    """`random:xlm-roberta-tiny` is the same checkpoint, written on the fly."""
    out = tmp_path / "rnd"
    export_onnx("random:xlm-roberta-tiny", out, ExportOptions(progress=False))
    a = Embedder(out, device="cpu").embed(TEXTS)
    b = Embedder(artifact, device="cpu").embed(TEXTS)
    assert np.abs(a - b).max() <= 1e-6


def test_max_length_past_positions_is_refused(tmp_path, folder):
    with pytest.raises(ValueError, match="8192 positions"):
        export_onnx(str(folder), tmp_path / "x", ExportOptions(progress=False, max_length=8193))


def test_8192_tokens(tmp_path, artifact, st_model):
    """One 8,192-token input: the same vector as PyTorch, and onnxruntime's peak RSS stays far
    below the batch x heads x S x S fp32 scores (4 x 8192^2 x 4 B = 1 GB) a masked
    MultiHeadAttention allocates."""
    text = " ".join(f"word{i} Wort{i} 词{i}" for i in range(4000))
    emb = Embedder(artifact, device="cpu")
    (ids,) = emb.encoder.encode([text], warn=False).ids
    assert len(ids) == 8192 and ids[0] == 0 and ids[-1] == 2
    ids_arr, mask = pad_right([ids])
    np.savez(tmp_path / "ids.npz", ids=ids_arr, mask=mask)
    script = Path(__file__).with_name("run_ort_subprocess.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(artifact / "model.onnx"), str(tmp_path / "ids.npz"),
         str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rss = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    ours = np.load(tmp_path / "out.npy")
    ref = st_model.encode([text])
    assert cosines(ours, ref).min() >= 0.99999
    print(f"xlm-roberta-tiny 8192 tokens: peak RSS {rss:.0f} MB")
    assert rss < 400, rss


def test_mean_pooling_folder(tmp_path):
    """multilingual-e5's head (mean pooling) read from the folder, vs sentence-transformers."""
    e5 = write_folder("xlm-roberta-tiny", tmp_path / "e5")
    pooling = json.loads((e5 / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=True)
    (e5 / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    out = tmp_path / "e5-art"
    manifest = export_onnx(str(e5), out, ExportOptions(progress=False))
    assert manifest.pooling == "mean"
    ours = Embedder(out, device="cpu").embed(TEXTS, batch_size=len(TEXTS))
    ref = _st(e5).encode(TEXTS, batch_size=len(TEXTS))
    assert cosines(ours, ref).min() >= 0.99999
