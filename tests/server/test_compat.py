"""Drop-in compatibility with the clients people already have, each against a real
`qexport serve` process (an embedder "emb" and a reranker "rr" in one process): `openai`,
`cohere` Client and ClientV2, `huggingface_hub.InferenceClient` on TEI's routes, TEI's bodies
and errors over httpx, and Jina's request shape. docs/design.md "Drop-in compatibility
(issue 26)" names these tests row by row."""

# fixtures imported from other test modules are used as arguments below
# ruff: noqa: F811

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.rerank.conftest import DOCS, QUERIES, rerank_ckpt, rerank_fp32, reranker_tokenizer  # noqa: F401
from tests.server.conftest import httpx
from tests.server.test_multi import TEXTS, both  # noqa: F401

LONG = "word " * 40_000  # past the tiny models' max_length: refused before the model runs


@pytest.fixture(scope="module")
def emb(tiny_artifact):  # type: ignore[no-untyped-def]
    from qexport.runtime import Embedder

    return Embedder(tiny_artifact, device="cpu")


@pytest.fixture(scope="module")
def rr(rerank_fp32):  # type: ignore[no-untyped-def]
    from qexport.runtime import Reranker

    return Reranker(rerank_fp32, device="cpu")


def test_openai_embeddings_float_base64_dimensions(both, emb):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{both.base}/v1", api_key="unused", max_retries=0)
    want = emb.embed(TEXTS)
    got = client.embeddings.create(model="emb", input=TEXTS, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in got.data], want, atol=1e-5)
    raw = client.embeddings.with_raw_response.create(
        model="emb", input=TEXTS, encoding_format="base64", dimensions=32
    ).http_response.json()
    vecs = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in raw["data"]]
    np.testing.assert_allclose(vecs, emb.embed(TEXTS, dim=32), atol=1e-5)
    default = client.embeddings.create(model="emb", input=TEXTS[0])  # base64 on the wire
    np.testing.assert_allclose(default.data[0].embedding, want[0], atol=1e-5)


def test_openai_unknown_model_is_not_found(both):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{both.base}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="gpt-4-does-not-exist", input="x")
    assert info.value.code == "model_not_found"
    assert [m.id for m in client.models.list()] == ["emb", "rr"]


def _check_ranked(results, scores, docs=None):  # type: ignore[no-untyped-def]
    order = np.argsort(-scores, kind="stable")[: len(results)]
    assert [r.index for r in results] == order.tolist()
    for r in results:
        assert abs(r.relevance_score - float(scores[r.index])) < 1e-6
        if docs is not None:
            assert r.document.text == docs[r.index]


def test_cohere_client_v1_both_document_shapes(both, rr):
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(api_key="unused", base_url=both.base)
    scores = rr.score(QUERIES[0], DOCS)
    got = client.rerank(model="rr", query=QUERIES[0], documents=DOCS, top_n=3)
    _check_ranked(got.results, scores)
    objects = [{"text": d} for d in DOCS]
    got = client.rerank(model="rr", query=QUERIES[0], documents=objects, return_documents=True)
    _check_ranked(got.results, scores, DOCS)


def test_cohere_client_v2_rerank_and_max_tokens_per_doc(both, rr):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=both.base)
    got = client.rerank(model="rr", query=QUERIES[1], documents=DOCS, top_n=4)
    _check_ranked(got.results, rr.score(QUERIES[1], DOCS))
    # max_tokens_per_doc=3: each document is its first 3 tokens (cut where the 3rd ends)
    tok = rr.encoder.tokenizer
    cut = [d[: tok.encode(d, add_special_tokens=False).offsets[:3][-1][1]] for d in DOCS]
    got = client.rerank(model="rr", query=QUERIES[1], documents=DOCS, max_tokens_per_doc=3)
    _check_ranked(got.results, rr.score(QUERIES[1], cut))
    assert cut[1] != DOCS[1]  # the cut changed something


def test_jina_request_shape(both, rr):
    body = {"model": "rr", "query": QUERIES[0], "top_n": 2, "return_documents": True,
            "documents": [{"text": d} for d in DOCS]}  # fmt: skip
    r = httpx.post(f"{both.base}/v1/rerank", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    order = np.argsort(-rr.score(QUERIES[0], DOCS), kind="stable")[:2]
    assert [x["index"] for x in got] == order.tolist()
    assert [x["document"]["text"] for x in got] == [DOCS[i] for i in order]
    r = httpx.post(f"{both.base}/v1/rerank", json={**body, "documents": [{"txt": "a"}]})
    assert r.status_code == 400 and 'without a string "text"' in r.json()["error"]["message"]


def test_hf_inference_client_feature_extraction(both, emb, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    # CI runs with HF_HUB_OFFLINE=1 (no hub here), which makes the client refuse every URL,
    # this local server's too; a user of a local server runs without it
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    client = hub.InferenceClient(base_url=both.base)
    got = client.feature_extraction(TEXTS[0])  # POST / with {"inputs": ...}
    np.testing.assert_allclose(np.asarray(got).reshape(-1), emb.embed(TEXTS[:1])[0], atol=1e-5)
    got = client.feature_extraction(TEXTS[1], dimensions=64, truncate=True)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), emb.embed(TEXTS[1:2], dim=64)[0],
                               atol=1e-5)  # fmt: skip


def test_tei_embed_options(both, emb):
    with httpx.Client(base_url=both.base, timeout=60) as c:
        r = c.post("/embed", json={"inputs": TEXTS, "truncation_direction": "Left"})
        np.testing.assert_allclose(r.json(), emb.embed(TEXTS), atol=1e-5)  # nothing cut
        r = c.post("/embed", json={"inputs": TEXTS[0], "prompt_name": "query", "dimensions": 32})
        prompt = emb.manifest.prompts["query"]
        np.testing.assert_allclose(r.json(), emb.embed([prompt + TEXTS[0]], dim=32), atol=1e-5)
        for body, status, kind, words in (
            ({"inputs": []}, 400, "Empty", "cannot be empty"),
            ({"inputs": [LONG], "truncate": False}, 422, "Validation", "must have less than"),
            ({"inputs": LONG, "truncation_direction": "left"}, 422, "Validation", "Left"),
            ({"inputs": "x", "normalize": False}, 422, "Validation", "normalises inside"),
            ({"inputs": "x", "prompt_name": "nope"}, 422, "Validation", "prompt_name"),
            ({"inputs": "x", "dimensions": 100}, 422, "Validation", "dimensions 100"),
            ({"inputs": [[1, 2]]}, 422, "Validation", "only strings"),
        ):
            r = c.post("/embed", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error_type"] == kind and words in r.json()["error"], r.text
        r = c.post("/embed", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()) == {"error", "error_type"}


def test_tei_rerank_and_dispatch(both, rr):
    with httpx.Client(base_url=both.base, timeout=60) as c:
        body = {"query": QUERIES[0], "texts": DOCS, "return_text": True}
        got = c.post("/rerank", json=body).json()
        scores = rr.score(QUERIES[0], DOCS)
        assert [x["index"] for x in got] == np.argsort(-scores, kind="stable").tolist()
        for x in got:
            assert abs(x["score"] - float(scores[x["index"]])) < 1e-6
            assert x["text"] == DOCS[x["index"]]
        raw = c.post("/", json={**body, "raw_scores": True, "return_text": False}).json()
        logits = rr.logits(QUERIES[0], DOCS)
        for x in raw:
            assert abs(x["score"] - float(logits[x["index"]])) < 1e-4 and "text" not in x
        r = c.post("/rerank", json={"query": "q", "texts": ["a", LONG], "truncate": False})
        assert r.status_code == 422 and r.json()["error_type"] == "Validation", r.text


def test_tei_info_and_tokenize(both, emb, rr):
    with httpx.Client(base_url=both.base, timeout=60) as c:
        info = c.get("/info").json()
        assert info["model_id"] == "emb" and "embedding" in info["model_type"]
        assert info["max_input_length"] == emb.encoder.max_length
        assert "reranker" in c.get("/info", params={"model": "rr"}).json()["model_type"]
        text = "héllo 中文"
        got = c.post("/tokenize", json={"inputs": text}).json()
        enc = emb.encoder.tokenizer.encode(text, add_special_tokens=True)
        assert [t["id"] for t in got[0]] == enc.ids
        data = text.encode()
        for t in got[0]:
            if not t["special"]:
                assert data[t["start"] : t["stop"]].decode("utf-8", "replace") == t["text"]
        got = c.post("/tokenize", json={"inputs": ["a b"], "model": "rr"}).json()
        assert [t["id"] for t in got[0]] == rr.encoder.tokenizer.encode("a b").ids
