"""Reranker runtime: rerank order, top_n, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from qexport.runtime import Reranker
from tests.rerank.conftest import DOCS, QUERIES


@pytest.fixture(scope="module")
def rr(rerank_fp32):  # type: ignore[no-untyped-def]
    return Reranker(rerank_fp32, device="cpu")


def test_rerank_is_score_sorted(rr):
    scores = rr.score(QUERIES[0], DOCS)
    assert scores.dtype == np.float32 and scores.shape == (len(DOCS),)
    assert np.all((scores > 0) & (scores < 1))
    full = rr.rerank(QUERIES[0], DOCS)
    assert sorted(i for i, _ in full) == list(range(len(DOCS)))
    assert [s for _, s in full] == sorted(scores.tolist(), reverse=True)
    assert all(scores[i] == s for i, s in full)
    assert rr.rerank(QUERIES[0], DOCS, top_n=3) == full[:3]
    assert rr.rerank(QUERIES[0], DOCS, top_n=100) == full
    assert rr.default_instruction.startswith("Given a web search query")


@pytest.mark.parametrize(
    ("query", "docs", "kw", "msg"),
    [
        ("", DOCS, {}, "query is an empty string"),
        (None, DOCS, {}, "query is NoneType, not str"),
        ("q", [], {}, "documents is empty"),
        ("q", "a single string", {}, "not a single string"),
        ("q", ["ok", 3], {}, r"documents\[1\] is int, not str"),
        ("q", ["ok", ""], {}, r"documents\[1\] is an empty string"),
        ("q", ["ok", "bad \ud800 surrogate"], {}, r"documents\[1\] is not valid Unicode"),
        ("q\udfff", ["ok"], {}, "query is not valid Unicode"),
        ("q", ["ok"], {"instruction": 5}, "instruction is int"),
        ("q", ["ok"], {"top_n": 0}, "top_n must be a positive integer"),
        ("q", ["ok"], {"top_n": 1.5}, "top_n must be a positive integer"),
        ("q", 7, {}, "documents must be a list of strings"),
    ],
)
def test_bad_input_is_a_clear_value_error(rr, query, docs, kw, msg):
    with pytest.raises(ValueError, match=msg):
        rr.rerank(query, docs, **kw)


def test_bad_batch_size(rr):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        rr.score("q", ["d"], batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Reranker(rr.path, device="cpu", max_batch_tokens=0)


def test_token_budget_batches_match(rerank_fp32, rr):
    small = Reranker(rerank_fp32, device="cpu", max_batch_tokens=128)  # one pair per pass
    np.testing.assert_allclose(small.score(QUERIES[1], DOCS), rr.score(QUERIES[1], DOCS), atol=1e-6)


def test_manifest_prompt_must_match_tokenizer(rerank_fp32, tmp_path):
    import json
    import shutil

    from qexport.manifest import MANIFEST_NAME, ManifestError

    bad = tmp_path / "bad"
    shutil.copytree(rerank_fp32, bad)
    path = bad / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["rerank"]["suffix_ids"] = data["rerank"]["suffix_ids"][:-1]
    path.chmod(0o644)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="suffix"):
        Reranker(bad, device="cpu")


def test_nan_output_is_an_error(rerank_nan):
    with pytest.raises(FloatingPointError, match="NaN/Inf for 2 pair"):
        Reranker(rerank_nan, device="cpu").score("q", ["a", "b"])


def test_manifest_without_task_loads_as_embed(tiny_artifact):
    import json

    from qexport.manifest import MANIFEST_NAME, Manifest

    data = json.loads((tiny_artifact / MANIFEST_NAME).read_text())
    assert data["task"] == "embed" and "rerank" not in data
    del data["task"]  # a manifest written before rerankers existed
    m = Manifest.from_dict(data)
    assert m.task == "embed" and m.rerank is None


def test_long_documents_tokenised_from_a_prefix_match_the_whole(rr):
    """A document far past max_length is tokenised only as far as its pair can hold; the kept
    ids equal tokenising the whole body (tokenizers, no qexport code) and cutting it."""
    from qexport.runtime.tokenize import CLIP_CHARS_PER_TOKEN, MARGIN, TokenLimitError

    enc = rr.encoder
    clip = CLIP_CHARS_PER_TOKEN * (enc.body_budget + MARGIN)
    docs = [
        "word " * (clip // 2),  # long enough for the prefix path
        "Zürich 東京 " * (clip // 5),  # multi-byte text, BPE merges across the cut
        "x" * (3 * clip),  # one long pre-token: the prefix grows
        "a short one",
    ]
    got = enc.pairs(QUERIES[0], docs)
    rows = got.ids
    assert got.truncated == 3
    for body, row in zip(enc.bodies(QUERIES[0], docs, None), rows, strict=True):
        whole = enc.tokenizer.encode(body, add_special_tokens=False).ids[: enc.body_budget]
        assert row == enc.prefix + whole + enc.suffix
    with pytest.raises(TokenLimitError, match="at most 100"):
        enc.pairs(QUERIES[0], docs, max_tokens=100)
