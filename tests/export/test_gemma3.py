"""Gemma3 with bidirectional attention (EmbeddingGemma shape) against sentence-transformers and
transformers in PyTorch, on random checkpoints written as the hub ships them (sharded bf16
safetensors, a byte-level BPE tokenizer trained in-process, Pooling + two Dense + Normalize,
prompts in config_sentence_transformers.json)."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.random import write_checkpoint as write_folder
from qexport.export.random.hub import GEMMA_PROMPTS
from qexport.runtime import Embedder
from qexport.runtime.tokenize import pad_right
from tests.conftest import cosines
from tests.texts import MIXED

FP16_MAX = 65504.0


def _st(folder: Path):  # type: ignore[no-untyped-def]
    import torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder("embeddinggemma-tiny", tmp_path_factory.mktemp("ckpt") / "gemma")


@pytest.fixture(scope="module")
def st_model(folder):  # type: ignore[no-untyped-def]
    return _st(folder)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, folder) -> Path:
    out = tmp_path_factory.mktemp("art") / "gemma-fp32"
    export_onnx(str(folder), out, ExportOptions(progress=False, token_embeddings=True))
    return out


def test_graph_and_manifest(artifact, folder):
    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    cfg = json.loads((folder / "config.json").read_text())
    sliding = cfg["layer_types"].count("sliding_attention")
    assert ops["MultiHeadAttention"] == cfg["num_hidden_layers"] == 6 and sliding == 4
    mha = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    # no key padding mask anywhere; the window bias only on the sliding layers
    assert sorted(len(n.input) for n in mha) == [3, 3] + [6] * sliding
    assert all(n.input[4] == "" for n in mha if len(n.input) > 3)
    assert ops["Gelu"] == 6 and ops["Softmax"] == 0
    heads = [i.name for i in model.graph.initializer if i.name.startswith("head.dense_")]
    assert heads == ["head.dense_0.weight", "head.dense_1.weight"]
    m = json.loads((artifact / "qexport.json").read_text())
    assert m["prompts"] == GEMMA_PROMPTS
    assert m["default_instruction"] == GEMMA_PROMPTS["query"]
    assert (m["pooling"], m["normalize"], m["embedding_dim"], m["max_length"]) == (
        "mean", True, 128, 2048,
    )  # fmt: skip


def test_fp32_matches_sentence_transformers(artifact, st_model):
    emb = Embedder(artifact, device="cpu")
    enc = emb.encoder.encode(MIXED)
    assert enc.ids == st_model.tokenizer(MIXED)["input_ids"]
    assert max(len(r) for r in enc.ids) > 4 * 33  # several sliding windows (33 keys each side)
    ours = emb.embed(MIXED, batch_size=len(MIXED))
    ref = st_model.encode(MIXED, batch_size=len(MIXED))
    assert cosines(ours, ref).min() >= 0.99999, cosines(ours, ref)
    sim = ours @ ours.T
    assert sim[~np.eye(len(MIXED), dtype=bool)].max() < 0.99


def test_the_sliding_window_matters(tmp_path, artifact, st_model):
    """Long texts differ from the same model with every layer full-attention: the window is
    really applied (and applied as transformers does, since the first test matches)."""
    full = write_folder("embeddinggemma-tiny", tmp_path / "full")
    cfg = json.loads((full / "config.json").read_text())
    cfg["layer_types"] = ["full_attention"] * cfg["num_hidden_layers"]
    (full / "config.json").write_text(json.dumps(cfg))
    long = [t for t in MIXED if len(st_model.tokenizer(t)["input_ids"]) > 100]
    no_window = _st(full).encode(long)
    ours = Embedder(artifact, device="cpu").embed(long)
    assert cosines(ours, st_model.encode(long)).min() >= 0.99999
    assert cosines(ours, no_window).max() < 0.999


def test_prompts_as_sentence_transformers_applies_them(artifact, st_model):
    emb = Embedder(artifact, device="cpu")
    queries, docs = MIXED[1:4], MIXED[3:6]
    q = emb.embed(queries, instruction=emb.manifest.prompts["query"])
    d = emb.embed(docs, instruction=emb.manifest.prompts["document"])
    assert cosines(q, st_model.encode(queries, prompt_name="query")).min() >= 0.99999
    assert cosines(d, st_model.encode(docs, prompt_name="document")).min() >= 0.99999
    assert cosines(q, emb.embed(queries)).max() < 0.999  # the prompt changes the vector
    sts = emb.embed(queries, instruction=emb.manifest.prompts["STS"])
    assert cosines(sts, st_model.encode(queries, prompt_name="STS")).min() >= 0.99999


def test_backbone_matches_transformers(artifact, folder):
    """token_embeddings == Gemma3TextModel's last_hidden_state on a right-padded batch."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    enc = Embedder(artifact, device="cpu").encoder.encode(MIXED)
    ids, mask = pad_right(enc.ids)
    sess = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    (tok,) = sess.run(["token_embeddings"], {"input_ids": ids, "attention_mask": mask})
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()  # fmt: skip
    m = mask.astype(bool)
    np.testing.assert_allclose(tok[m], ref[m], atol=2e-4, rtol=1e-3)


def test_batch_equals_single(artifact):
    emb = Embedder(artifact, device="cpu", max_batch_tokens=10**6)  # one padded batch
    batch = emb.embed(MIXED, batch_size=len(MIXED))
    single = np.concatenate([emb.embed([t]) for t in MIXED])
    assert np.abs(batch - single).max() <= 1e-5


def test_fp16_matches_sentence_transformers(tmp_path, folder, st_model):
    out = tmp_path / "gemma-fp16"
    export_onnx(str(folder), out, ExportOptions(precision="fp16", progress=False))
    ours = Embedder(out, device="cpu").embed(MIXED, batch_size=len(MIXED))
    assert cosines(ours, st_model.encode(MIXED, batch_size=len(MIXED))).min() >= 0.999


def test_stress_fp16_stays_finite_and_accurate(tmp_path):
    """random:gemma3-stress: the fp32 residual stream passes fp16's 65,504 (checked in
    PyTorch), yet the fp16 artifact (fp32 residual and norms) is finite and matches fp32."""
    import torch

    folder = write_folder("gemma3-stress", tmp_path / "stress")
    st = _st(folder)
    tok = st.tokenizer(MIXED[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = st[0].auto_model(**tok, output_hidden_states=True).hidden_states
    peak = max(float(h[tok["attention_mask"].bool()].abs().max()) for h in hidden[1:-1])
    assert peak > FP16_MAX, peak
    ref = st.encode(MIXED, batch_size=len(MIXED))
    out = tmp_path / "stress-fp16"
    export_onnx("random:gemma3-stress", out, ExportOptions(precision="fp16", progress=False))
    ours = Embedder(out, device="cpu").embed(MIXED, batch_size=len(MIXED))
    assert np.isfinite(ours).all()
    assert cosines(ours, ref).min() >= 0.999, cosines(ours, ref)


def test_2048_tokens(tmp_path, artifact, st_model):
    """One 2,048-token input (the model's maximum): the same vector as PyTorch; peak RSS."""
    text = " ".join(f"token{i} item {i * 7 % 13}" for i in range(2000))
    emb = Embedder(artifact, device="cpu")
    (ids,) = emb.encoder.encode([text], warn=False).ids
    assert len(ids) == 2048 and ids[0] == 2 and ids[-1] == 1
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
    assert cosines(ours, st_model.encode([text])).min() >= 0.99999
    print(f"embeddinggemma-tiny 2048 tokens: peak RSS {rss:.0f} MB")
    assert rss < 400, rss


def test_causal_gemma_is_refused(tmp_path, folder):
    bad = write_folder("embeddinggemma-tiny", tmp_path / "causal")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["use_bidirectional_attention"] = False
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        export_onnx(str(bad), tmp_path / "out", ExportOptions(progress=False))
    assert not (tmp_path / "out").exists()


def test_unsupported_dense_activation_is_refused(tmp_path):
    bad = write_folder("embeddinggemma-tiny", tmp_path / "relu")
    dense = json.loads((bad / "2_Dense" / "config.json").read_text())
    dense["activation_function"] = "torch.nn.modules.activation.ReLU"
    (bad / "2_Dense" / "config.json").write_text(json.dumps(dense))
    with pytest.raises(
        ValueError, match=re.escape("Dense activation 'torch.nn.modules.activation.ReLU'")
    ):
        export_onnx(str(bad), tmp_path / "out", ExportOptions(progress=False))


@pytest.mark.parametrize(
    "precision",
    [
        "int8",
        "int8-dynamic",
        pytest.param(
            "int4",
            marks=pytest.mark.xfail(
                strict=True,
                reason="int4 (GPTQ, asymmetric, block 32) of random:embeddinggemma-tiny holds "
                "0.98 on the built-in calibration texts (0.9801) but measures ~0.972 on these "
                "held-out texts, like MiniLM's int4 (tests/export/test_quantize_minilm.py); "
                "AWQ scales before GPTQ do not lift it (held-out min vs the fp32 artifact "
                "0.970 without, 0.962 folded into the norms, 0.948 with inserted Muls); "
                "a wider int8 mix passes (0.983) only with every widening step taken "
                "(docs/benchmarks.md, issue 28 int4, 'A wider int8 mix')",
            ),
        ),
    ],
)
def test_quantized_dense_head_matches_sentence_transformers(tmp_path, folder, st_model, precision):
    """Calibration reads the Dense head's pooled [B, C] activations too (int4's GPTQ and
    int8-dynamic's SmoothQuant failed on them with an IndexError); the artifact holds its bar
    against sentence-transformers fp32."""
    from qexport.export.quantize import BARS, QuantOptions

    out = tmp_path / precision
    opts = ExportOptions(precision=precision, progress=False, quant=QuantOptions())
    manifest = export_onnx(str(folder), out, opts)
    texts = MIXED[:8]
    ours = Embedder(out, device="cpu").embed(texts)
    ref = st_model.encode(texts)
    assert np.isfinite(ours).all()
    assert cosines(ours, ref).min() >= BARS[precision], cosines(ours, ref)
    assert manifest.quantization is not None
    nodes = [n for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    assert any(n.op_type in ("MatMulNBits", "DynamicQuantizeMatMul") for n in nodes)
