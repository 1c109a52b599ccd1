"""Fixtures for the Qwen3-Reranker tests: a random reranker of an odd small shape written the
way the hub ships it (Qwen3ForCausalLM keys, tied embeddings, sharded bf16 safetensors, the
real reranker tokenizer from ../shared/qwen3-reranker/0.6B), its exports, and the model card's
recipe in transformers fp32 on the same folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SHARED, need_shared

RERANKER_TOKENIZER = SHARED / "qwen3-reranker" / "0.6B"
QUERIES = ("What is the capital of China?", "Explain gravity")
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to "
    "physical objects and is responsible for the movement of planets around the sun.",
    "Fresh basil, ripe tomatoes and olive oil make a simple summer pasta sauce.",
    "Unrelated.",
    "中国的首都是北京，它有三千多年的历史。",
    "def f(x):\n    return {x: x ** 2}  # braces {instruction} stay literal",
    "x",
    "The Neural Engine runs fixed-shape graphs, so inputs are padded to a ladder rung. " * 6,
]


@pytest.fixture(scope="session")
def reranker_tokenizer() -> Path:
    return need_shared(RERANKER_TOKENIZER)


@pytest.fixture(scope="session")
def rerank_ckpt(tmp_path_factory: pytest.TempPathFactory, reranker_tokenizer: Path) -> Path:
    from qexport.export.random import write_checkpoint

    # named like the hub model so that the export recognises it without --task
    folder = tmp_path_factory.mktemp("ckpt") / "Qwen3-Reranker-tiny-random"
    return write_checkpoint("qwen3-reranker-tiny", folder, tokenizer=reranker_tokenizer)


def _export(folder: Path, out: Path, **kw) -> Path:  # type: ignore[no-untyped-def]
    from qexport.export.api import ExportOptions, export_onnx

    export_onnx(str(folder), out, ExportOptions(progress=False, **kw))
    return out


@pytest.fixture(scope="session")
def rerank_fp32(tmp_path_factory: pytest.TempPathFactory, rerank_ckpt: Path) -> Path:
    return _export(rerank_ckpt, tmp_path_factory.mktemp("rr") / "fp32")


@pytest.fixture(scope="session")
def rerank_fp16(tmp_path_factory: pytest.TempPathFactory, rerank_ckpt: Path) -> Path:
    return _export(rerank_ckpt, tmp_path_factory.mktemp("rr") / "fp16", precision="fp16")


@pytest.fixture(scope="session")
def rerank_int8(tmp_path_factory: pytest.TempPathFactory, rerank_ckpt: Path) -> Path:
    return _export(rerank_ckpt, tmp_path_factory.mktemp("rr") / "int8", precision="int8")


@pytest.fixture(scope="session")
def rerank_nan(tmp_path_factory: pytest.TempPathFactory, rerank_fp32: Path) -> Path:
    """The fp32 reranker with one NaN in its yes-minus-no vector: every pair's logit is NaN."""
    import shutil

    import numpy as np
    import onnx

    bad = tmp_path_factory.mktemp("rerank") / "nan"
    shutil.copytree(rerank_fp32, bad)
    model = onnx.load(str(bad / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "score_weight_yes_minus_no":
            w = onnx.numpy_helper.to_array(init).copy()
            w[0] = np.nan
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    (bad / "model.onnx").chmod(0o644)
    onnx.save(model, str(bad / "model.onnx"))
    return bad


@pytest.fixture(scope="session")
def card(rerank_ckpt: Path):  # type: ignore[no-untyped-def]
    from qexport.validate.rerank_reference import CardReranker

    return CardReranker(rerank_ckpt)
