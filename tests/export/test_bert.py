"""The BERT graph on real weights (all-MiniLM-L6-v2): the fused operators it is made of, and
parity with sentence-transformers' own encode() in PyTorch on every STS-B test sentence and on
long SciFact documents (truncated at 256 tokens), fp32 and fp16; unsupported models refused."""

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
from qexport.export.families import SPECS
from qexport.export.families.bert import BertBuilder
from qexport.export.weights import SafetensorsSource
from qexport.runtime import Embedder
from qexport.validate.retrieval import load_beir
from qexport.validate.sts import load_sts
from tests.conftest import SHARED, cosines, need_shared
from tests.texts import MIXED

STSB = SHARED / "data" / "stsb" / "test.tsv"
SCIFACT = SHARED / "data" / "scifact"


@pytest.fixture(scope="module")
def st_model(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="module")
def stsb_sentences() -> list[str]:
    return load_sts(need_shared(STSB)).sentences


@pytest.fixture(scope="module")
def stsb_reference(st_model, stsb_sentences) -> np.ndarray:
    return st_model.encode(stsb_sentences, batch_size=64, normalize_embeddings=True)


@pytest.fixture(scope="module")
def long_docs(minilm_artifact) -> list[str]:
    """The 64 longest SciFact documents (title + " " + text): all far past 256 tokens."""
    texts = load_beir(need_shared(SCIFACT)).corpus_texts
    enc = Embedder(minilm_artifact, device="cpu").encoder
    lengths = [len(ids) for ids in enc.encode(texts, warn=False).ids]
    return [texts[i] for i in np.argsort(lengths)[-64:]]


def test_op_census(minilm_artifact):
    model = onnx.load(str(minilm_artifact / "model.onnx"), load_external_data=False)
    ops = collections.Counter((n.domain or "ai.onnx", n.op_type) for n in model.graph.node)
    layers = 6
    ms = "com.microsoft"
    assert ops[(ms, "MultiHeadAttention")] == layers  # one bidirectional attention per layer
    assert ops[(ms, "SkipLayerNormalization")] == 2 * layers  # residual + bias + LayerNorm
    assert ops[(ms, "BiasGelu")] == layers  # erf GELU with the bias fused
    assert ops[("ai.onnx", "LayerNormalization")] == 1  # the embeddings
    assert ops[("ai.onnx", "MatMul")] == 4 * layers  # fused qkv, out, up, down: all plain MatMul
    for absent in ("Softmax", "Erf", "Tanh", "Pow", "ReduceMean", "Attention"):
        assert ops[("ai.onnx", absent)] == 0, absent
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    manifest = json.loads((minilm_artifact / "qexport.json").read_text())
    assert (manifest["pooling"], manifest["normalize"], manifest["max_length"]) == (
        "mean",
        True,
        256,
    )


def test_fp32_matches_sentence_transformers_on_stsb(
    minilm_artifact, stsb_sentences, stsb_reference
):
    assert len(stsb_sentences) == 2758
    ours = Embedder(minilm_artifact, device="cpu").embed(stsb_sentences, batch_size=64)
    cos = cosines(ours, stsb_reference)
    assert cos.min() >= 0.99999, (cos.min(), stsb_sentences[int(cos.argmin())])
    # the check means something only if different sentences give different vectors
    assert np.mean(np.sum(ours[:1379] * ours[1379:], axis=1)) < 0.8


def test_fp16_matches_sentence_transformers_on_stsb(tmp_path, minilm_dir, stsb_sentences,
                                                    stsb_reference):  # fmt: skip
    out = tmp_path / "minilm-fp16"
    export_onnx(str(minilm_dir), out, ExportOptions(precision="fp16", progress=False))
    model = onnx.load(str(out / "model.onnx"))
    dtypes = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in model.graph.initializer
              if t.name.endswith(".qkv")}  # fmt: skip
    assert dtypes == {np.dtype(np.float16)}
    ours = Embedder(out, device="cpu").embed(stsb_sentences, batch_size=64)
    assert ours.dtype == np.float32
    cos = cosines(ours, stsb_reference)
    assert cos.min() >= 0.999, (cos.min(), stsb_sentences[int(cos.argmin())])


def test_long_documents_truncate_like_sentence_transformers(minilm_artifact, st_model, long_docs):
    emb = Embedder(minilm_artifact, device="cpu")
    enc = emb.encoder.encode(long_docs, warn=False)
    assert enc.truncated == len(long_docs) and all(len(r) == 256 for r in enc.ids)
    assert all(r[-1] == 102 for r in enc.ids)  # [SEP] stays last
    with pytest.warns(UserWarning, match="truncated"):
        ours = emb.embed(long_docs, batch_size=16)
    ref = st_model.encode(long_docs, batch_size=16, normalize_embeddings=True)
    assert cosines(ours, ref).min() >= 0.99999


def test_padding_does_not_leak(minilm_artifact):
    """The key-padding mask: a text's vector is the same alone and in a padded batch."""
    emb = Embedder(minilm_artifact, device="cpu")
    batch = emb.embed(MIXED, batch_size=len(MIXED))
    single = np.concatenate([emb.embed([t]) for t in MIXED])
    assert np.abs(batch - single).max() <= 1e-5


def test_no_token_types_means_two_inputs(minilm_dir):
    cfg = json.loads((minilm_dir / "config.json").read_text())
    weights = SafetensorsSource(minilm_dir, strip_prefixes=SPECS["bert"].strip_prefixes)
    assert BertBuilder(cfg, weights, "fp32", 256).input_names[-1] == "token_type_ids"
    cfg["type_vocab_size"] = 0
    assert BertBuilder(cfg, weights, "fp32", 256).input_names == ("input_ids", "attention_mask")


# -- unsupported models: one line, exit 2, naming what is missing -------------------------------


def _variant(src: Path, dst: Path, config: dict | None = None) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.name != "config.json":
            (dst / p.name).symlink_to(p)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config or {})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _cli_error(model: Path, out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "qexport.cli", "-q", "onnx", str(model), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ({"model_type": "modernbert", "architectures": ["ModernBertModel"]},
         "model_type 'modernbert' (ModernBertModel) is not supported"),
    ],
)  # fmt: skip
def test_unsupported_config_is_refused(tmp_path, minilm_dir, change, needle):
    model = _variant(minilm_dir, tmp_path / "model", change)
    assert needle in _cli_error(model, tmp_path / "out")


def test_unsupported_pooling_is_refused(tmp_path, minilm_dir):
    model = _variant(minilm_dir, tmp_path / "model")
    (model / "1_Pooling").unlink()
    (model / "1_Pooling").mkdir()
    pooling = json.loads((minilm_dir / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_weightedmean_tokens=True)
    (model / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert "pooling mode 'weightedmean' is not supported" in _cli_error(model, tmp_path / "out")


def test_unsupported_module_is_refused(tmp_path, minilm_dir):
    model = _variant(minilm_dir, tmp_path / "model")
    modules = json.loads((minilm_dir / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_LayerNorm",
                       "type": "sentence_transformers.models.LayerNorm"})  # fmt: skip
    (model / "modules.json").unlink()
    (model / "modules.json").write_text(json.dumps(modules))
    line = _cli_error(model, tmp_path / "out")
    assert "'sentence_transformers.models.LayerNorm'" in line and "not supported" in line
