"""Export of a Qwen3-Reranker (`--task rerank`) against the model card's transformers recipe
in PyTorch fp32 (qexport.validate.rerank_reference, which shares no code with the export)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file

from qexport.export.api import ExportOptions, export_onnx, task_for
from qexport.export.quantize import QuantOptions
from qexport.export.random import REGISTRY
from qexport.manifest import load_manifest
from qexport.runtime import Embedder, Reranker
from qexport.runtime.session import DeviceError
from tests.conftest import SHARED, need_shared
from tests.rerank.conftest import DOCS, QUERIES

PREFIX_IDS = [151644, 8948, 198, 60256, 3425, 279, 11789, 20027, 279, 8502, 3118, 389, 279,
              11361, 323, 279, 758, 1235, 3897, 13, 7036, 429, 279, 4226, 646, 1172, 387, 330,
              9693, 1, 476, 330, 2152, 3263, 151645, 198, 151644, 872, 198]  # fmt: skip
SUFFIX_IDS = [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
FP32_LOGODDS_TOL = 1e-4
FP16_LOGODDS_TOL = 0.02  # measured 0.003 on this model (docs/design.md, "Reranker")


def _card_logodds(card, query, docs=DOCS, instruction=None):  # type: ignore[no-untyped-def]
    return card.logodds(card.pairs(query, docs, instruction), batch_size=len(docs))


def test_checkpoint_is_hub_shaped(rerank_ckpt):
    cfg = json.loads((rerank_ckpt / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["tie_word_embeddings"] is True
    index = json.loads((rerank_ckpt / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == 2  # sharded
    keys = set(index["weight_map"])
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    shard = load_file(str(rerank_ckpt / files[0]))
    assert {str(v.dtype) for v in shard.values()} == {"bfloat16"}


def test_manifest_graph_and_head(rerank_ckpt, rerank_fp32):
    m = load_manifest(rerank_fp32, verify=True)
    assert m.task == "rerank" and m.source["kind"] == "folder"  # auto-detected, no --task
    r = m.rerank
    assert r is not None and r.prefix_ids == PREFIX_IDS and r.suffix_ids == SUFFIX_IDS
    assert (r.yes_id, r.no_id, r.pad_id) == (9693, 2152, 151643)
    assert r.max_body_tokens == 8192 - 39 - 9 and m.max_length == 8192
    # a typed record per task: no embedding fields in a rerank manifest
    data = json.loads((rerank_fp32 / "qexport.json").read_text())
    assert m.embedding is None and not {"pooling", "embedding_dim", "similarity"} & set(data)
    assert set(m.timings_s) >= {"resolve", "build graph", "tokenizer", "write weights"}
    assert [(o.name, o.shape) for o in m.outputs] == [("score", ["batch"]), ("logit", ["batch"])]
    model = onnx.load(str(rerank_fp32 / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["score", "logit"]
    head = {i.name: i for i in model.graph.initializer}["score_weight_yes_minus_no"]
    w = onnx.numpy_helper.to_array(head)
    # independent: the bf16 embedding rows, upcast, subtracted in fp32
    emb = load_file(str(rerank_ckpt / "model-00001-of-00002.safetensors"))[
        "model.embed_tokens.weight"
    ]
    rows = emb[[9693, 2152]].astype(np.float32)
    assert w.dtype == np.float32 and np.array_equal(w, rows[0] - rows[1])
    # the vocabulary never appears as an activation: only the embedding Gather reads the table
    assert not any(n.op_type == "MatMul" and "embed_tokens" in "".join(n.input)
                   for n in model.graph.node)  # fmt: skip


def test_fp32_matches_card_recipe(rerank_fp32, card):
    rr = Reranker(rerank_fp32, device="cpu")
    for query in QUERIES:
        ours = rr.logits(query, DOCS, batch_size=len(DOCS))
        theirs = _card_logodds(card, query)
        assert np.abs(ours - theirs).max() <= FP32_LOGODDS_TOL, (ours, theirs)
        assert np.ptp(theirs) > 0.2  # the documents really score differently
        assert list(np.argsort(-ours, kind="stable")) == list(np.argsort(-theirs, kind="stable"))
        np.testing.assert_allclose(rr.score(query, DOCS), card.scores(card.pairs(query, DOCS)),
                                   atol=3e-5)  # fmt: skip
    # the token ids themselves are the card's
    ids = rr.encoder.pairs(QUERIES[0], DOCS).ids
    assert ids == card.input_ids(card.pairs(QUERIES[0], DOCS))


def test_instruction_matches_card(rerank_fp32, card):
    task = "Given a question, retrieve passages that answer it"
    rr = Reranker(rerank_fp32, device="cpu")
    ours = rr.logits(QUERIES[1], DOCS, task)
    assert np.abs(ours - _card_logodds(card, QUERIES[1], instruction=task)).max() <= 1e-4
    assert np.abs(ours - rr.logits(QUERIES[1], DOCS)).max() > 1e-3  # the instruction matters


def test_batch_equals_single(rerank_fp32):
    rr = Reranker(rerank_fp32, device="cpu")
    batch = rr.score(QUERIES[0], DOCS, batch_size=len(DOCS))
    single = np.concatenate([rr.score(QUERIES[0], [d]) for d in DOCS])
    assert np.abs(batch - single).max() <= 1e-6


def test_truncation_keeps_suffix_and_matches_card(rerank_ckpt, tmp_path):
    from qexport.validate.rerank_reference import CardReranker

    out = tmp_path / "short"
    export_onnx(str(rerank_ckpt), out, ExportOptions(progress=False, max_length=96))
    rr = Reranker(out, device="cpu")
    long_doc = "Gravity bends light and keeps the planets on their orbits. " * 40
    docs = [long_doc, DOCS[0], "Another long one: " + "word " * 300]
    got = rr.encoder.pairs(QUERIES[1], docs)
    ids = got.ids
    assert got.truncated == 2
    assert len(ids[0]) == 96 and ids[0][-9:] == SUFFIX_IDS and ids[2][-9:] == SUFFIX_IDS
    card = CardReranker(rerank_ckpt, max_length=96)
    assert ids == card.input_ids(card.pairs(QUERIES[1], docs))
    with pytest.warns(UserWarning, match="2 pair"):
        ours = rr.logits(QUERIES[1], docs)
    assert np.abs(ours - card.logodds(card.pairs(QUERIES[1], docs))).max() <= FP32_LOGODDS_TOL


def test_fp16_within_bar(rerank_fp32, rerank_fp16, card):
    rr16 = Reranker(rerank_fp16, device="cpu")
    for query in QUERIES:
        ours = rr16.logits(query, DOCS)
        theirs = _card_logodds(card, query)
        assert np.abs(ours - theirs).max() <= FP16_LOGODDS_TOL


def test_int8_passes_its_check(rerank_int8, card):
    m = load_manifest(rerank_int8)
    check = m.quantization["check"]
    assert m.precision == "int8" and check["max_abs_logodds_diff"] <= check["max_logodds_diff_bar"]
    assert check["top3_overlap_mean"] >= 2 / 3 and check["pairs"] >= 100
    graph = onnx.load(str(rerank_int8 / "model.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MatMulNBits") == 3 * 7 and "MatMul" not in ops
    # the score vector stays fp32 (and untouched)
    head = {i.name: i for i in graph.graph.initializer}["score_weight_yes_minus_no"]
    assert head.data_type == onnx.TensorProto.FLOAT
    rr = Reranker(rerank_int8, device="cpu")
    for query in QUERIES:  # vs the card itself, within the same bar
        assert np.abs(rr.logits(query, DOCS) - _card_logodds(card, query)).max() <= 0.3


def test_int8_refused_when_bar_impossible(rerank_ckpt, tmp_path):
    from qexport.export.quantize import QuantizationRefused

    out = tmp_path / "int8-tight"
    with pytest.raises(QuantizationRefused, match="int8 refused: max \\|log-odds difference\\|"):
        export_onnx(str(rerank_ckpt), out,
                    ExportOptions(progress=False, precision="int8",
                                  quant=QuantOptions(max_logodds_diff=1e-7)))  # fmt: skip
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written left


def test_bf16_builds_and_cpu_refuses_clearly(rerank_ckpt, tmp_path):
    out = tmp_path / "bf16"
    export_onnx(str(rerank_ckpt), out, ExportOptions(progress=False, precision="bf16"))
    model = onnx.load(str(out / "model.onnx"))  # (CUDA runs: tests/runtime/test_cuda.py style)
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["layers.0.self_attn.q_proj.weight"] == onnx.TensorProto.BFLOAT16
    assert types["score_weight_yes_minus_no"] == onnx.TensorProto.FLOAT
    with pytest.raises(DeviceError, match="bf16"):
        Reranker(out, device="cpu")


def test_unsupported_options_refused(rerank_ckpt, tmp_path):
    for kw, msg in (({"precision": "int4"}, "supports precisions"),
                    ({"token_embeddings": True}, "token-embeddings"),
                    ({"max_length": 50000}, "max_position_embeddings"),
                    ({"max_length": 40}, "no room")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            export_onnx(str(rerank_ckpt), tmp_path / "x", ExportOptions(progress=False, **kw))


def test_task_detection(rerank_ckpt, tmp_path):
    def task(model, option=None):  # type: ignore[no-untyped-def]
        return task_for(model, option).name

    assert (
        task(str(rerank_ckpt)) == "rerank"
        and task("random:qwen3-reranker-0.6b", "auto") == "rerank"
    )
    assert task("Qwen/Qwen3-Reranker-4B") == "rerank"
    assert task("Qwen/Qwen3-Embedding-0.6B") == "embed"
    assert task(str(rerank_ckpt), "embed") == "embed"
    assert task("random:qwen3-tiny") == "embed"
    renamed = tmp_path / "some-qwen3"  # same files, no "reranker" in the name: not guessed
    renamed.symlink_to(rerank_ckpt, target_is_directory=True)
    assert task(str(renamed)) == "embed" and task(str(renamed), "rerank") == "rerank"
    with pytest.raises(ValueError, match="cannot be exported with --task embed"):
        task_for("random:qwen3-reranker-tiny", "embed")
    with pytest.raises(ValueError, match="cannot be exported with --task rerank"):
        task_for("random:qwen3-tiny", "rerank")
    with pytest.raises(
        ValueError, match="unknown task 'classify'; choose from auto, embed, rerank"
    ):
        task_for("random:qwen3-tiny", "classify")


def test_embed_and_rerank_artifacts_refuse_each_other(rerank_fp32, tiny_artifact):
    with pytest.raises(ValueError, match=r"is a rerank artifact.*Reranker"):
        Embedder(rerank_fp32, device="cpu")
    with pytest.raises(ValueError, match=r"embedding artifact.*Embedder"):
        Reranker(tiny_artifact, device="cpu")


def test_registry_matches_published_configs():
    root = need_shared(SHARED / "qwen3-reranker")
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta",
            "max_position_embeddings", "tie_word_embeddings", "architectures", "eos_token_id")  # fmt: skip
    for size in ("0.6B", "4B"):
        real = json.loads((root / size / "config.json").read_text())
        ours = REGISTRY[f"qwen3-reranker-{size.lower()}"].config
        assert {k: ours[k] for k in keys} == {k: real[k] for k in keys}, size


@pytest.mark.slow
def test_exact_06b_architecture_truncated(tmp_path, reranker_tokenizer):
    """The 0.6B widths (hidden 1024, 16/8 heads of 128, FFN 3072, vocab 151,669, tied) with
    2 of its 28 layers, written as a hub checkpoint and exported from the folder."""
    from qexport.export.random import write_checkpoint
    from qexport.validate.rerank_reference import CardReranker

    ckpt = write_checkpoint("qwen3-reranker-0.6b", tmp_path / "Qwen3-Reranker-0.6B-l2",
                                 layers=2, tokenizer=reranker_tokenizer)  # fmt: skip
    out = tmp_path / "q06"
    export_onnx(str(ckpt), out, ExportOptions(progress=False))
    assert (out / "model.onnx_data").is_file()  # 0.6 GB of fp32 embeddings: external data
    card = CardReranker(ckpt)
    rr = Reranker(out, device="cpu")
    for query in QUERIES:
        ours = rr.logits(query, DOCS)
        theirs = _card_logodds(card, query)
        assert np.abs(ours - theirs).max() <= FP32_LOGODDS_TOL, (ours, theirs)
        assert list(np.argsort(-ours, kind="stable")) == list(np.argsort(-theirs, kind="stable"))


def test_cli_export_and_usage_errors(rerank_ckpt, tmp_path, capsys):
    from qexport.cli import main

    out = tmp_path / "cli"
    assert main(["-q", "onnx", str(rerank_ckpt), "-o", str(out), "--task", "rerank"]) == 0
    assert "(reranker, fp32, max length 8192" in capsys.readouterr().out
    assert load_manifest(out).task == "rerank"
    for extra, msg in (
        (["--precision", "int4"], "supports precisions fp32, fp16, bf16, int8"),
        (["--precision", "int8", "--max-logodds-diff", "0"], "--max-logodds-diff must be > 0"),
        (["--task", "embed"], "--task"),
    ):
        args = ["onnx", "random:qwen3-reranker-tiny", "-o", str(tmp_path / "y"), *extra]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("config", "name", "want"),
    [
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, "my-Reranker", True),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, "my-model", False),
        ({"model_type": "qwen3", "architectures": ["Qwen3Model"]}, "reranker", False),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM", "X"]}, "reranker", False),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "bge-reranker", False),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "reranker", False),
        (["not", "a", "dict"], "reranker", False),
    ],
)
def test_auto_detection_reads_the_family_spec(tmp_path, config, name, want):
    from qexport.export.rerank import is_reranker_folder

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert is_reranker_folder(tmp_path, name) is want


def test_sigkill_during_weight_conversion_then_rerun_cleans_up(tmp_path, reranker_tokenizer):
    """A rerank export killed while its random checkpoint is being written leaves only its
    staging folder (the checkpoint is inside it), which the next run on the same output
    removes: nothing else beside OUT, nothing half-written."""
    out = tmp_path / "out"
    env = dict(os.environ, QEXPORT_SHARED=str(reranker_tokenizer.parents[1]))
    cmd = [sys.executable, "-m", "qexport.cli", "-q", "onnx", "random:qwen3-reranker-tiny",
           "-o", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    shards: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        shards = list(tmp_path.rglob("*.safetensors"))  # wherever the export writes it
        if shards:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert shards and proc.returncode == -signal.SIGKILL, "the export finished before the kill"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith(".out.qexport-") and left[0].endswith(".partial")
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert load_manifest(out, verify=True).task == "rerank"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not any(p.suffix == ".safetensors" for p in out.rglob("*"))


def test_v1_rerank_manifest_from_main_opens_and_scores(rerank_int8, tmp_path):
    """An int8 rerank artifact whose qexport.json is exactly what main (schema 1) wrote for
    random:qwen3-reranker-tiny int8 opens in today's Reranker and scores as its own does."""
    import shutil

    from tests.test_manifest import v1_manifest

    folder = tmp_path / "v1"
    shutil.copytree(rerank_int8, folder)
    (folder / "qexport.json").write_text(json.dumps(v1_manifest("rerank")))
    old = Reranker(folder, device="cpu")
    assert old.manifest.embedding is None and old.pad_id == 151643
    ours = Reranker(rerank_int8, device="cpu")
    assert np.array_equal(old.logits(QUERIES[0], DOCS), ours.logits(QUERIES[0], DOCS))
