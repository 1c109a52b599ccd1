"""The family specs against what the published checkpoints say: model types, the Qwen3 prompts
and instruction format of the model card, which checkpoints --task rerank takes; and the random
models resolved through the spec."""

from __future__ import annotations

import json

import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.families import SPECS, UnsupportedModelError, family_for
from qexport.export.random import write_checkpoint as write_folder
from qexport.export.source import SourceError, resolve
from tests.conftest import QWEN_06B, SHARED, need_shared

# Qwen/Qwen3-Embedding-0.6B's model card, "Sentence Transformers Usage" / "Transformers Usage"
CARD_TASK = "Given a web search query, retrieve relevant passages that answer the query"
CARD_QUERY = "Instruct: " + CARD_TASK + "\nQuery:What is the capital of China?"


def _json(path):
    return json.loads(need_shared(path).read_text(encoding="utf-8"))


def test_family_for_reads_model_type(minilm_dir):
    assert family_for(_json(QWEN_06B / "config.json")) == "qwen3"
    assert family_for(json.loads((minilm_dir / "config.json").read_text())) == "bert"
    with pytest.raises(UnsupportedModelError, match=r"'llama' \(LlamaModel\).*supported: bert"):
        family_for({"model_type": "llama", "architectures": ["LlamaModel"]})


def test_qwen3_prompts_are_the_published_ones():
    """A Qwen3 folder without config_sentence_transformers.json gets the prompts the hub's
    Qwen3-Embedding checkpoints ship."""
    published = _json(QWEN_06B / "config_sentence_transformers.json")["prompts"]
    assert dict(SPECS["qwen3"].default_prompts) == published


def test_random_qwen3_resolves_to_the_card_recipe():
    src = resolve("random:qwen3-tiny")
    assert src.family == "qwen3"
    assert (src.head.pooling, src.head.normalize) == ("lasttoken", True)
    assert src.head.default_instruction == CARD_TASK
    template = src.head.instruction_template
    assert template is not None
    assert template.format(instruction=CARD_TASK, text="What is the capital of China?") == (
        CARD_QUERY
    )


def test_which_checkpoints_export_as_a_reranker():
    reranker = _json(SHARED / "qwen3-reranker" / "0.6B" / "config.json")
    qwen3 = SPECS["qwen3"]
    assert qwen3.exports_reranker(reranker)
    assert qwen3.exports_reranker({k: v for k, v in reranker.items() if k != "architectures"})
    assert not qwen3.exports_reranker(dict(reranker, architectures=["Qwen3Model"]))
    assert not any(s.exports_reranker(reranker) for n, s in SPECS.items() if n != "qwen3")


def test_rerank_refuses_another_family(tmp_path):
    folder = write_folder("embeddinggemma-tiny", tmp_path / "gemma")
    opts = ExportOptions(progress=False, task="rerank")
    with pytest.raises(SourceError, match=r"--task rerank supports.*\(gemma3\)"):
        export_onnx(str(folder), tmp_path / "out", opts)
    assert not (tmp_path / "out").exists()
