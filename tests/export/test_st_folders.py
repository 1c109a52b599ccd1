"""Folders saved by the installed sentence-transformers (6.x names its modules
`sentence_transformers.base.modules.transformer.Transformer` & co. and writes new config files)
for every family qexport exports, against `SentenceTransformer(folder).encode` in PyTorch; the
same model written by hand with the module names and files of 1.x-5.3, 5.4-5.x and 6.x
exports identically; what the artifact would compute differently is refused in one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.families import UnsupportedModelError
from qexport.export.random import REGISTRY, random_weights, write_checkpoint
from qexport.export.source import resolve
from qexport.runtime import Embedder
from tests.conftest import QWEN_06B, cosines, need_shared
from tests.texts import MIXED

TEXTS = [
    *MIXED,
    "  leading, trailing   and repeated\tspaces\n ",
    "Emoji 🚀 and accents: café, naïve, Ångström — «quotes».",
    "Москва — столица России. 東京は日本の首都です。",
    "word " * 400,  # past MiniLM's 256 tokens: truncated as sentence-transformers does
]
QUERIES = ["What is the capital of China?", "Explain gravity", "x"]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _st(folder: Path):  # type: ignore[no-untyped-def]
    import torch
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})


def _qwen3_hf(tmp: Path) -> Path:
    """random:qwen3-tiny's weights and config with the real Qwen3 tokenizer (transformers'
    layout: no sentence-transformers files)."""
    from safetensors.numpy import save_file

    tok = need_shared(QWEN_06B)
    hf = tmp / "qwen3-hf"
    hf.mkdir()
    model = REGISTRY["qwen3-tiny"]
    src = random_weights(model)
    save_file({k: src.load(k) for k in src.keys()}, str(hf / "model.safetensors"), {"format": "pt"})
    (hf / "config.json").write_text(json.dumps(model.config))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy2(tok / name, hf / name)
    return hf


def _qwen3_folder(tmp: Path) -> Path:
    """A Qwen3-Embedding fine-tune as users save it: the published folder's sentence-transformers
    files (last-token Pooling, Normalize, the query prompt) on tiny random weights, loaded and
    saved by the installed sentence-transformers."""
    hub = _qwen3_hf(tmp)
    for name in ("modules.json", "config_sentence_transformers.json"):
        shutil.copy2(QWEN_06B / name, hub / name)
    pooling = json.loads((QWEN_06B / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = REGISTRY["qwen3-tiny"].config["hidden_size"]
    _write(hub / "1_Pooling" / "config.json", pooling)
    return _resaved(hub, tmp, "qwen3")


def _resaved(source: Path, tmp: Path, name: str) -> Path:
    """Load a folder with the installed sentence-transformers and save() it again."""
    _st(source).save(str(tmp / name))
    return tmp / name


FAMILIES = ["qwen3", "bert", "xlm-roberta", "gemma3"]


@pytest.fixture(scope="module")
def saved(request, tmp_path_factory) -> Callable[[str], Path]:
    """family -> (folder saved by the installed sentence-transformers), built on demand."""
    tmp = tmp_path_factory.mktemp("st-saved")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            if family == "qwen3":
                cache[family] = _qwen3_folder(tmp)
            elif family == "bert":  # all-MiniLM-L6-v2, real weights
                cache[family] = _resaved(request.getfixturevalue("minilm_dir"), tmp, family)
            else:
                name = {"xlm-roberta": "xlm-roberta-tiny", "gemma3": "embeddinggemma-tiny"}[family]
                cache[family] = _resaved(write_checkpoint(name, tmp / f"{name}-hub"), tmp, family)
        return cache[family]

    return get


def _export(folder: Path, out: Path) -> Any:
    return export_onnx(str(folder), out, ExportOptions(progress=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_by_installed_sentence_transformers(saved, tmp_path, family):
    import sentence_transformers

    folder = saved(family)
    types = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
    if int(sentence_transformers.__version__.split(".")[0]) >= 6:  # the names this is about
        assert not any(t.startswith("sentence_transformers.models.") for t in types), types
        assert "sentence_transformers.base.modules.transformer.Transformer" in types
    manifest = _export(folder, tmp_path / "art")
    st = _st(folder)
    assert manifest.architecture["family"] == family
    assert manifest.max_length == st.max_seq_length, (manifest.max_length, st.max_seq_length)
    assert manifest.embedding_dim == st.encode(["x"]).shape[1]
    emb = Embedder(tmp_path / "art", device="cpu")
    ours = emb.embed(TEXTS, batch_size=4)
    ref = st.encode(TEXTS, batch_size=4, normalize_embeddings=False)  # its Normalize does it
    assert np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-5)
    cos = cosines(ours, ref)
    print(f"{family}: min cosine {cos.min():.7f}")
    assert cos.min() >= 0.99999, cos
    if manifest.prompts.get("query"):  # the query prompt, as sentence-transformers applies it
        instruction = emb.default_instruction or manifest.prompts["query"]
        q = emb.embed(QUERIES, instruction=instruction)
        q_ref = st.encode(QUERIES, prompt_name="query")
        assert cosines(q, q_ref).min() >= 0.99999
        assert cosines(q, emb.embed(QUERIES)).max() < 0.9999  # the prompt changes the vector


# -- the same model, hand-written with each release's names and files ------------------------

OLD = "sentence_transformers.models."
SPELLINGS = {
    "1.x-5.3": [OLD + k for k in ("Transformer", "Pooling", "Dense", "Dense", "Normalize")],
    "5.4-5.x": [
        "sentence_transformers.base.modules.transformer.Transformer",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "sentence_transformers.base.modules.dense.Dense",
        "sentence_transformers.base.modules.dense.Dense",
        "sentence_transformers.sentence_transformer.modules.normalize.Normalize",
    ],
    "6.x": [
        "sentence_transformers.base.modules.transformer.Transformer",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "sentence_transformers.base.modules.dense.Dense",
        "sentence_transformers.base.modules.dense.Dense",
        "sentence_transformers.base.modules.normalize.Normalize",
    ],
    "re-exports": [
        "sentence_transformers.sentence_transformer.modules.Transformer",
        "sentence_transformers.sentence_transformer.modules.Pooling",
        "sentence_transformers.base.modules.Dense",
        "sentence_transformers.sentence_transformer.modules.Dense",
        "sentence_transformers.base.modules.Normalize",
    ],
}


def _with_types(folder: Path, types: list[str]) -> None:
    modules = json.loads((folder / "modules.json").read_text())
    assert len(modules) == len(types)
    for m, t in zip(modules, types, strict=True):
        m["type"] = t
    _write(folder / "modules.json", modules)


def _as_6x_files(folder: Path) -> None:
    """Rewrite the module files as 6.x saves them."""
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    _write(folder / "1_Pooling" / "config.json", {
        "embedding_dimension": pooling["word_embedding_dimension"],
        "pooling_mode": "mean", "include_prompt": True,
    })  # fmt: skip
    for dense in ("2_Dense", "3_Dense"):
        cfg = json.loads((folder / dense / "config.json").read_text())
        cfg.update(module_input_name="sentence_embedding", module_output_name="sentence_embedding")
        _write(folder / dense / "config.json", cfg)
    _write(folder / "4_Normalize" / "config.json",
           {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})  # fmt: skip
    max_len = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    # 6.x keeps the length only as the tokenizer's (the hub folder already says the same)
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == max_len
    _write(folder / "sentence_bert_config.json", {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    })  # fmt: skip
    st_cfg = json.loads((folder / "config_sentence_transformers.json").read_text())
    st_cfg.update(model_type="SentenceTransformer", __version__={"sentence_transformers": "6.3.0"})
    _write(folder / "config_sentence_transformers.json", st_cfg)


def _as_2x_dense(folder: Path) -> None:
    """2.x saved Dense weights with torch.save (pytorch_model.bin), not safetensors."""
    import torch
    from safetensors.torch import load_file

    for dense in ("2_Dense", "3_Dense"):
        state = load_file(str(folder / dense / "model.safetensors"))
        torch.save(state, str(folder / dense / "pytorch_model.bin"))
        (folder / dense / "model.safetensors").unlink()


def _comparable(manifest: Any) -> dict[str, Any]:
    d = manifest.to_dict()  # the JSON form: the embedding record flat, as qexport.json has it
    return {k: v for k, v in d.items() if k not in ("source", "timings_s", "versions")}


@pytest.fixture(scope="module")
def gemma_hub(tmp_path_factory) -> Path:
    """EmbeddingGemma's layout: Transformer, Pooling, two Dense, Normalize, prompts."""
    return write_checkpoint("embeddinggemma-tiny", tmp_path_factory.mktemp("hub") / "gemma")


def test_every_release_spelling_exports_identically(gemma_hub, tmp_path):
    """Each variant is written at the same path (the graph's doc string names the source)."""
    folder = tmp_path / "model"
    variants = [*SPELLINGS, "2.x Dense weights"]
    manifests = {}
    for i, label in enumerate(variants):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(gemma_hub, folder)
        if label in SPELLINGS:
            _with_types(folder, SPELLINGS[label])
        if label in ("6.x", "re-exports"):
            _as_6x_files(folder)
        if label == "2.x Dense weights":
            _as_2x_dense(folder)
        manifests[label] = _comparable(_export(folder, tmp_path / f"art-{i}"))
        if label == "6.x":  # the hand-written 6.x files are what 6.x itself reads
            ours = Embedder(tmp_path / f"art-{i}", device="cpu").embed(TEXTS)
            assert cosines(ours, _st(folder).encode(TEXTS)).min() >= 0.99999
    first = manifests["1.x-5.3"]
    assert first["files"] and first["pooling"] == "mean" and first["max_length"] == 2048
    for label, manifest in manifests.items():
        assert manifest == first, label  # same graph, weights and tokenizer bytes; same head


def test_1x_layout_transformer_in_its_own_folder(minilm_dir, tmp_path):
    """1.x saved every module in a subfolder: the Transformer's config, weights, tokenizer and
    sentence_bert_config.json in 0_Transformer/."""
    folder = tmp_path / "minilm-1x"
    inner = folder / "0_Transformer"
    shutil.copytree(minilm_dir, inner)
    for sub in ("1_Pooling", "modules.json", "config_sentence_transformers.json"):
        shutil.move(str(inner / sub), str(folder / sub))
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    modules[-1]["path"] = "2_Normalize"
    (folder / "2_Normalize").mkdir()
    _write(folder / "modules.json", modules)
    manifest = _export(folder, tmp_path / "art")
    assert manifest.max_length == 256  # sentence_bert_config.json read from 0_Transformer/
    ours = Embedder(tmp_path / "art", device="cpu").embed(TEXTS)
    assert cosines(ours, _st(folder).encode(TEXTS)).min() >= 0.99999


# -- refused in one line ---------------------------------------------------------------------


def _edit(src: Path, dst: Path, rel: str, change: dict[str, Any]) -> Path:
    folder = shutil.copytree(src, dst)
    path = folder / rel
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(change)
    _write(path, data)
    return folder


LAYER_NORM_6X = "sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm"


@pytest.mark.parametrize(
    ("rel", "change", "needle"),
    [
        ("1_Pooling/config.json", {"pooling_mode": ["mean", "max"]},
         "pooling must be exactly one mode, found ['mean', 'max']"),
        ("1_Pooling/config.json", {"pooling_mode": "weightedmean"},
         "pooling mode 'weightedmean' is not supported"),
        ("4_Normalize/config.json", {"module_input_name": "token_embeddings"},
         "Normalize module_input_name='token_embeddings'"),
        ("2_Dense/config.json", {"module_output_name": "token_embeddings"},
         "Dense module_output_name='token_embeddings'"),
        ("sentence_bert_config.json", {"transformer_task": "text-generation"},
         "transformer_task 'text-generation' is not supported"),
        ("sentence_bert_config.json", {"do_lower_case": True}, "do_lower_case=true"),
        ("config_sentence_transformers.json", {"default_prompt_name": "query"},
         "default_prompt_name 'query'"),
        ("config_sentence_transformers.json", {"truncate_dim": 64}, "truncate_dim=64"),
        ("config_sentence_transformers.json", {"model_type": "SparseEncoder"},
         "model_type 'SparseEncoder' is not an embedding model"),
    ],
)  # fmt: skip
def test_what_would_differ_is_refused(gemma_hub, tmp_path, rel, change, needle):
    folder = _edit(gemma_hub, tmp_path / "m", rel, change)
    with pytest.raises(UnsupportedModelError, match=re.escape(needle)):
        resolve(str(folder))


def test_chat_template_transformer_is_refused(tmp_path):
    """6.x builds a Transformer on a tokenizer with a chat template to render every text
    through that template (modality 'message'); the artifact tokenizes the text as it is."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf = _qwen3_hf(tmp_path)
    transformer = Transformer(str(hf), model_kwargs={"dtype": torch.float32})
    assert "message" in transformer.modality_config, transformer.modality_config
    pooling = Pooling(REGISTRY["qwen3-tiny"].config["hidden_size"], pooling_mode="lasttoken")
    st = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    st.save(str(tmp_path / "chat"))
    with pytest.raises(UnsupportedModelError, match="modality_config has 'message'"):
        resolve(str(tmp_path / "chat"))


def test_unknown_module_is_one_line_naming_it(gemma_hub, tmp_path):
    folder = shutil.copytree(gemma_hub, tmp_path / "m")
    _with_types(folder, [*SPELLINGS["6.x"][:4], LAYER_NORM_6X])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "qexport.cli", "-q", "onnx", str(folder), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{LAYER_NORM_6X!r} (4_Normalize) is not supported" in lines[0]
    assert "supported: Transformer, Pooling, Dense, Normalize" in lines[0]
    assert not out.exists()
