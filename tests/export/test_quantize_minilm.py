"""Quantization on real weights (all-MiniLM-L6-v2): fidelity against sentence-transformers'
encode() in PyTorch fp32, and retrieval agreement with the fp32 artifact (STS-B Spearman,
SciFact nDCG@10 on a subsample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.quantize import (
    BARS,  # the one table: quantize, validate, CLI help
    QuantizationRefused,
)
from qexport.runtime import Embedder
from qexport.texts import BUILTIN_TEXTS
from tests.conftest import SHARED, cosines, need_shared


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, minilm_dir):  # type: ignore[no-untyped-def]
    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        """`variant`: a precision, or int8-dynamic:MODE (QuantOptions.per_token)."""
        from qexport.export.quantize import QuantOptions

        if variant not in made:
            precision, _, per_token = variant.partition(":")
            quant = QuantOptions(per_token=per_token) if per_token else QuantOptions()
            out = tmp_path_factory.mktemp("minilm") / precision
            opts = ExportOptions(precision=precision, progress=False, quant=quant)
            export_onnx(str(minilm_dir), out, opts)
            made[variant] = out
        return made[variant]

    return get


def _held_out() -> list[str]:
    """200 STS-B test sentences: texts the calibration (the built-in set) never saw."""
    from qexport.validate.sts import load_sts

    return load_sts(need_shared(SHARED / "data" / "stsb" / "test.tsv")).sentences[::9][:200]


@pytest.fixture(scope="module")
def fidelity_texts() -> list[str]:
    return list(BUILTIN_TEXTS) + _held_out()


@pytest.fixture(scope="module")
def st_reference(minilm_dir, fidelity_texts):  # type: ignore[no-untyped-def]
    from qexport.validate.reference import TorchReference

    return TorchReference(str(minilm_dir)).embed(fidelity_texts)


@pytest.mark.parametrize(
    "precision",
    [
        "int8",
        pytest.param(
            "int4",
            marks=pytest.mark.xfail(
                strict=True,
                reason="int4 on all-MiniLM-L6-v2 (GPTQ, asymmetric, block 32) holds 0.98 on "
                "the built-in calibration texts but measures min cosine ~0.973 on held-out "
                "STS-B sentences (round-to-nearest: ~0.92; docs/benchmarks.md, Quantization). "
                "AWQ scales before GPTQ (QuantOptions(awq='all'); 'fold' finds no foldable "
                "norm in BERT's post-LN graph) lift int4 before int8 widening (0.947 -> 0.953) "
                "but not after it: 0.965 on these sentences, so int4 keeps AWQ off. A wider "
                "int8 mix holds 0.985 only with 16 of 24 projections int8, 9.9 of int8's "
                "11.9 MB (docs/benchmarks.md, issue 28 int4, 'A wider int8 mix'); 512 "
                "calibration texts instead of 32 move the int4 weights' held-out min by +0.004 "
                "('More calibration text for int4')",
            ),
        ),
    ],
)
def test_minilm_fidelity_vs_sentence_transformers(
    quantized, st_reference, fidelity_texts, precision
):
    """Min cosine against sentence-transformers' encode() over the built-in texts plus 200
    held-out STS-B sentences."""
    ours = Embedder(quantized(precision), device="cpu").embed(fidelity_texts)
    cos = cosines(ours, st_reference)
    assert cos.min() >= BARS[precision], (precision, float(cos.min()), float(cos.mean()))


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    """STS-B test sentences and SciFact documents (qexport.validate.heldout): never calibration."""
    from qexport.validate.heldout import held_out_texts

    return held_out_texts(need_shared(SHARED / "data"), sentences=200, documents=50)


def test_held_out_texts_are_not_calibration_texts(held_out):
    assert len(held_out) == 250 and len(set(held_out)) > 240
    assert not set(held_out) & set(BUILTIN_TEXTS)


@pytest.mark.parametrize("variant", ["int8-dynamic", "int8-dynamic:all"])
def test_minilm_int8_dynamic_holds_its_bar_held_out(quantized, minilm_artifact, held_out, variant):
    """int8-dynamic (calibrated on the built-in texts only) against the fp32 artifact on
    held-out STS-B sentences and SciFact documents, in Embedder.embed's default batches: BERT's
    default (per token on the FFN output projections only: FamilySpec.int8_dynamic_per_token)
    and per token everywhere (all)."""
    import json

    path = quantized(variant)
    record = json.loads((path / "qexport.json").read_text())["quantization"]
    assert record["per_token"] == (variant.partition(":")[2] or "ffn")
    assert record["matmuls_quantized"] == 24 - len(record["float_projections"])
    cos = cosines(Embedder(path, device="cpu").embed(held_out),
                  Embedder(minilm_artifact, device="cpu").embed(held_out))  # fmt: skip
    # issue 28's goal, above the exporter's bar (BARS: 0.99, which also gates the Qwen3 shapes)
    assert cos.min() >= max(BARS["int8-dynamic"], 0.995), (float(cos.min()), float(cos.mean()))


@pytest.mark.heavy
def test_minilm_int8_dynamic_below_its_bar_is_refused(tmp_path, minilm_dir):
    """Asked for a cosine per-tensor int8 activations cannot give on real weights even with
    per-token scaling and half of the projections left float, the exporter refuses, names
    the measured cosine and the bar, and writes nothing."""
    from qexport.export.quantize import QuantOptions

    out = tmp_path / "dyn"
    opts = ExportOptions(precision="int8-dynamic", progress=False,
                         quant=QuantOptions(min_cosine=0.9999))  # fmt: skip
    with pytest.raises(QuantizationRefused, match=r"measured min cosine 0\.9\d{3} .*bar 0\.9999"):
        export_onnx(str(minilm_dir), out, opts)
    assert not out.exists()


@pytest.mark.parametrize("precision", ["int8"])
def test_minilm_stsb_agrees_with_fp32(quantized, minilm_artifact, precision):
    from qexport.validate.sts import cosine_spearman, load_sts

    pairs = load_sts(need_shared(SHARED / "data" / "stsb" / "test.tsv"))

    def score(path: Path) -> float:
        emb = Embedder(path, device="cpu").embed(pairs.sentences, batch_size=64)
        n = len(pairs.sentences1)
        return cosine_spearman(emb[:n], emb[n:], pairs.scores)

    base, q = score(minilm_artifact), score(quantized(precision))
    assert base > 0.8  # the published 0.82032 for fp32
    assert abs(q - base) <= 0.01, (precision, base, q)


@pytest.mark.heavy
@pytest.mark.parametrize("precision", ["int8"])
def test_minilm_scifact_ndcg_agrees_with_fp32(quantized, minilm_artifact, precision):
    """SciFact, 150 sampled queries against their relevant documents plus others, 600 in all (the full
    corpus numbers are in docs/benchmarks.md)."""
    from qexport.validate.retrieval import evaluate, load_beir, search

    data = load_beir(need_shared(SHARED / "data" / "scifact"), max_corpus=600, max_queries=150)

    def ndcg(path: Path) -> float:
        emb = Embedder(path, device="cpu")
        docs = emb.embed(data.corpus_texts, batch_size=32)
        queries = emb.embed(data.query_texts, batch_size=64)
        ranking = search(queries, docs, data.corpus_ids, k=100)
        return evaluate(ranking, data.query_ids, data.qrels)["ndcg@10"]

    base, q = ndcg(minilm_artifact), ndcg(quantized(precision))
    assert base > 0.6
    assert np.isfinite(q) and abs(q - base) <= 0.01, (precision, base, q)
