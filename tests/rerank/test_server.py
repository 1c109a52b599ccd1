"""`qexport serve` on a rerank artifact: POST /v1/rerank with a real server process and httpx;
/v1/embeddings is absent there (and /v1/rerank on an embedding server); bad requests get
400/413/422 in the OpenAI error shape."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from qexport.runtime import Reranker  # noqa: E402
from qexport.server.app import ServerConfig, create_app  # noqa: E402
from tests.rerank.conftest import DOCS, QUERIES  # noqa: E402


def _serve(artifact: Path, log: Path, *extra: str):  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qexport.cli", "-q", "serve", str(artifact), "--device", "cpu",
         "--port", str(port), *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "qexport serve did not come up"
        time.sleep(0.2)


def test_rerank_route_with_real_server(rerank_fp32, tmp_path):
    rr = Reranker(rerank_fp32, device="cpu")
    expected = rr.score(QUERIES[0], DOCS)
    proc, base = _serve(rerank_fp32, tmp_path / "serve.log", "--model-name", "rr-test")
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.post("/v1/rerank", json={"model": "rr-test", "query": QUERIES[0],
                                                "documents": DOCS, "top_n": 3,
                                                "return_documents": True})  # fmt: skip
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "rr-test" and len(body["results"]) == 3
            order = np.argsort(-expected, kind="stable")[:3]
            assert [x["index"] for x in body["results"]] == order.tolist()
            got = np.array([x["relevance_score"] for x in body["results"]])
            np.testing.assert_allclose(got, expected[order], atol=1e-6)
            assert [x["document"]["text"] for x in body["results"]] == [DOCS[i] for i in order]
            tokens = sum(len(ids) for ids in rr.encoder.encode(QUERIES[0], DOCS)[0])
            assert body["usage"] == {"total_tokens": tokens}

            plain = client.post("/v1/rerank", json={"query": QUERIES[1], "documents": DOCS[:2],
                                                    "instruction": "Find the answer"}).json()  # fmt: skip
            assert len(plain["results"]) == 2 and "document" not in plain["results"][0]
            want = rr.score(QUERIES[1], DOCS[:2], "Find the answer")
            for x in plain["results"]:
                assert abs(x["relevance_score"] - float(want[x["index"]])) < 1e-6

            r = client.post("/v1/embeddings", json={"input": "x"})
            assert r.status_code == 404
            r = client.post("/v1/rerank", json={"query": "q", "documents": ["a", 1]})
            assert r.status_code == 400 and r.json()["error"]["param"] == "documents"
            assert "documents[1] is int" in r.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_embedding_server_has_no_rerank_route(tiny_artifact):
    from qexport.runtime import Embedder
    from qexport.server.app import create_app

    with TestClient(create_app(Embedder(tiny_artifact, device="cpu"))) as client:
        assert client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 404


@pytest.fixture(scope="module")
def client(rerank_fp32):  # type: ignore[no-untyped-def]
    app = create_app(
        Reranker(rerank_fp32, device="cpu"), ServerConfig(max_items=4, max_request_tokens=400)
    )
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "status", "msg"),
    [
        ({"query": "", "documents": ["a"]}, 400, "query is an empty string"),
        ({"query": 3, "documents": ["a"]}, 400, "query is int"),
        ({"query": "q", "documents": []}, 400, "documents is empty"),
        ({"query": "q", "documents": ["a", ""]}, 400, r"documents\[1\] is an empty string"),
        ({"query": "q", "documents": [{"text": "a"}]}, 400, r"documents\[0\] is dict"),
        ({"query": "q", "documents": ["a"], "instruction": ""}, 400, "instruction is an empty"),
        ({"query": "q", "documents": ["a"] * 5}, 413, "at most 4 per request"),
        ({"query": "q", "documents": ["word " * 500]}, 413, "at most 400"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n"),
        ({"query": "q"}, 422, "documents"),
        ({"query": "q", "documents": "a"}, 422, "documents"),
    ],
)
def test_bad_requests(client, body, status, msg):
    import re

    r = client.post("/v1/rerank", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and re.search(msg, err["message"])


def test_invalid_json_is_400(client):
    r = client.post(
        "/v1/rerank", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_rerank_route_is_hardened_like_embeddings(rerank_fp32, tmp_path):
    """Auth, metrics, the body limit counted while reading (a chunked body too), bounded
    tokenisation of a huge document, lone surrogates: the same rules as /v1/embeddings."""
    psutil = pytest.importorskip("psutil")
    from tests.server.conftest import qexport_serve

    args = ("--api-key", "k3y", "--max-body-bytes", str(4 << 20))
    with qexport_serve(rerank_fp32, tmp_path, *args) as srv:
        auth = {"Authorization": "Bearer k3y"}
        with httpx.Client(base_url=srv.base, timeout=60) as c:
            ok = {"query": QUERIES[0], "documents": DOCS[:2]}
            r = c.post("/v1/rerank", json=ok)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert c.post("/v1/rerank", json=ok, headers=auth).status_code == 200
            assert c.get("/health").status_code == 200  # open for load balancers

            def chunks():  # type: ignore[no-untyped-def]
                yield b'{"query": "q", "documents": ["'
                for _ in range(80):
                    yield b"x" * (64 << 10)

            r = c.post("/v1/rerank", content=chunks(), headers=auth)
            assert r.status_code == 413 and "passed" in r.json()["error"]["message"]

            rss = psutil.Process(srv.proc.pid).memory_info().rss
            # 3.5 MB of text in one document: tokenised only as far as its pair can hold
            huge = {"query": "q", "documents": ["word " * 700_000, "short"], "top_n": 1}
            r = c.post("/v1/rerank", json=huge, headers=auth)
            assert r.status_code == 200, r.text
            grew = psutil.Process(srv.proc.pid).memory_info().rss - rss
            assert grew < 200 << 20, grew

            bad = b'{"query": "q", "documents": ["a\\ud800b"]}'
            r = c.post(
                "/v1/rerank", content=bad, headers={**auth, "content-type": "application/json"}
            )
            assert r.status_code == 400 and "documents[0]" in r.json()["error"]["message"]

            text = c.get("/metrics", headers=auth).text
            assert 'qexport_requests_total{route="/v1/rerank",status="200"}' in text
            assert 'qexport_refusals_total{reason="body_too_large"}' in text
