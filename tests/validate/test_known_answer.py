"""Known-answer scores of the exported all-MiniLM-L6-v2 (fp32) run by the runtime Embedder,
computed the MTEB way, against the published MTEB results."""

from __future__ import annotations

import pytest

from qexport.runtime import Embedder
from qexport.validate.retrieval import evaluate, load_beir, published_ndcg10, search
from qexport.validate.sts import PUBLISHED_SPEARMAN, cosine_spearman, load_sts
from tests.conftest import SHARED, need_shared

STSB = SHARED / "data" / "stsb" / "test.tsv"
SCIFACT = SHARED / "data" / "scifact"


def test_stsb_spearman_matches_published(minilm_artifact):
    pairs = load_sts(need_shared(STSB))
    emb = Embedder(minilm_artifact, device="cpu")
    vectors = emb.embed(pairs.sentences, batch_size=64)
    n = len(pairs.sentences1)
    score = cosine_spearman(vectors[:n], vectors[n:], pairs.scores)
    published = PUBLISHED_SPEARMAN[("all-minilm-l6-v2", "stsb")]
    print(f"STS-B test Spearman {score:.5f} (published {published})")
    assert published == 0.82032
    assert abs(score - published) <= 0.002, score


@pytest.mark.heavy
def test_scifact_ndcg10_matches_published(minilm_artifact):
    data = load_beir(need_shared(SCIFACT))  # the whole corpus (5,183) and all 300 queries
    assert (len(data.corpus_ids), len(data.query_ids)) == (5183, 300)
    emb = Embedder(minilm_artifact, device="cpu")
    with pytest.warns(UserWarning, match="truncated"):  # max length 256, as published
        docs = emb.embed(data.corpus_texts, batch_size=32)
    queries = emb.embed(data.query_texts, batch_size=64)
    ranking = search(queries, docs, data.corpus_ids, k=100)
    ndcg = evaluate(ranking, data.query_ids, data.qrels)["ndcg@10"]
    published = published_ndcg10("all-minilm-l6-v2", "scifact")
    print(f"SciFact nDCG@10 {ndcg:.5f} (published {published})")
    assert published == 0.64508
    assert abs(ndcg - published) <= 0.005, ndcg
