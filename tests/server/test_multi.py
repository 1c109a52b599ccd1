"""`qexport serve EMB RR ...`: several artifacts in one real server process, routed by
`model`; /v1/models, /health and /metrics per model; a model not served is a 404."""

# fixtures imported from other test modules are used as arguments below
# ruff: noqa: F811

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.rerank.conftest import DOCS, QUERIES, rerank_ckpt, rerank_fp32, reranker_tokenizer  # noqa: F401
from tests.server.conftest import free_port, httpx, qexport_serve

TEXTS = ["The capital of China is Beijing.", "Gravity attracts bodies.", "中文 text"]


def serve_many(artifacts: list[Path], log_dir: Path, *args: str):  # type: ignore[no-untyped-def]
    """`qexport serve A B ... --port FREE ARGS...` on 127.0.0.1, up and healthy."""
    return qexport_serve(artifacts, log_dir, *args)


@pytest.fixture(scope="module")
def both(tiny_artifact, rerank_fp32, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One process: the tiny embedder as "emb", the tiny reranker as "rr"."""
    log_dir = tmp_path_factory.mktemp("serve")
    with serve_many([tiny_artifact, rerank_fp32], log_dir, "--name", "emb", "--name", "rr") as s:
        yield s


def test_models_health_and_routing(both, tiny_artifact, rerank_fp32):
    from qexport.runtime import Embedder, Reranker

    with httpx.Client(base_url=both.base, timeout=60) as c:
        models = c.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["emb", "rr"]
        health = c.get("/health").json()
        assert health["status"] == "ok" and set(health["models"]) == {"emb", "rr"}
        assert health["models"]["emb"]["task"] == "embed"
        assert health["models"]["rr"]["task"] == "rerank"

        # `model` may be omitted: one model of each kind is served
        got = c.post("/v1/embeddings", json={"input": TEXTS}).json()
        want = Embedder(tiny_artifact, device="cpu").embed(TEXTS)
        vecs = np.array([d["embedding"] for d in got["data"]], dtype=np.float32)
        np.testing.assert_allclose(vecs, want, atol=1e-5)
        assert got["model"] == "emb"
        r = c.post("/v1/rerank", json={"model": "rr", "query": QUERIES[0], "documents": DOCS})
        scores = Reranker(rerank_fp32, device="cpu").score(QUERIES[0], DOCS)
        for x in r.json()["results"]:
            assert abs(x["relevance_score"] - float(scores[x["index"]])) < 1e-6

        # a model of the other kind, or not served: 404 model_not_found, OpenAI's shape
        for path, body in (
            ("/v1/embeddings", {"model": "rr", "input": "x"}),
            ("/v1/rerank", {"model": "emb", "query": "q", "documents": ["d"]}),
            ("/v1/embeddings", {"model": "gpt-4-does-not-exist", "input": "x"}),
        ):
            r = c.post(path, json=body)
            assert r.status_code == 404, r.text
            err = r.json()["error"]
            assert err["code"] == "model_not_found" and err["param"] == "model"
            assert body["model"] in err["message"]


def test_metrics_are_labelled_per_model(both):
    with httpx.Client(base_url=both.base, timeout=60) as c:
        r = c.post("/v1/rerank", json={"query": QUERIES[1], "documents": DOCS[:3]})
        assert r.status_code == 200
        text = c.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    assert samples['qexport_batcher_up{model="emb"}'] == 1
    assert samples['qexport_batcher_up{model="rr"}'] == 1
    assert samples['qexport_tokens_total{model="rr"}'] >= r.json()["usage"]["total_tokens"]
    assert samples['qexport_requests_total{route="/v1/rerank",status="200"}'] >= 1
    assert all(not k.startswith("qexport_requests_total{model") for k in samples)


def test_two_embedders_need_a_model_name(tiny_artifact, tmp_path):
    with serve_many([tiny_artifact, tiny_artifact], tmp_path, "--name", "a", "--name", "b") as s:
        with httpx.Client(base_url=s.base, timeout=60) as c:
            r = c.post("/v1/embeddings", json={"input": "x"})
            assert r.status_code == 400 and "name one in `model`" in r.json()["error"]["message"]
            a = c.post("/v1/embeddings", json={"model": "a", "input": "x"}).json()
            b = c.post("/v1/embeddings", json={"model": "b", "input": "x"}).json()
            assert a["model"] == "a" and b["model"] == "b"
            assert a["data"][0]["embedding"] == b["data"][0]["embedding"]
            # TEI's /embed: the same rule, TEI's error body
            r = c.post("/embed", json={"inputs": "x"})
            assert r.status_code == 422 and r.json()["error_type"] == "Validation"
            assert c.post("/embed", json={"inputs": "x", "model": "b"}).status_code == 200


def test_same_folder_twice_without_names_is_a_usage_error(tiny_artifact):
    cmd = [sys.executable, "-m", "qexport.cli", "serve", str(tiny_artifact), str(tiny_artifact),
           "--device", "cpu", "--port", str(free_port())]  # fmt: skip
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert got.returncode == 2, got.stderr
    assert "two models are served as 'tiny-fp32'" in got.stderr


def test_tei_routes_share_the_api_key(emb):
    from fastapi.testclient import TestClient

    from qexport.server.app import ServerConfig, create_app

    app = create_app([("emb", emb)], ServerConfig(api_key="sekret"))
    with TestClient(app) as c:
        for method, path, body in (("post", "/embed", {"inputs": "x"}),
                                   ("post", "/", {"inputs": "x"}),
                                   ("post", "/tokenize", {"inputs": "x"}),
                                   ("get", "/info", None)):  # fmt: skip
            r = c.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            ok = c.request(method, path, json=body, headers={"Authorization": "Bearer sekret"})
            assert ok.status_code == 200, (path, ok.text)
        assert c.get("/health").status_code == 200
