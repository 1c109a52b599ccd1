"""`qexport serve` on a rerank artifact: POST /v1/rerank with a real server process and httpx;
/v1/embeddings is absent there (and /v1/rerank on an embedding server); bad requests get
400/413/422 in the OpenAI error shape."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
            tokens = sum(len(ids) for ids in rr.encoder.pairs(QUERIES[0], DOCS).ids)
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
        ({"query": "q", "documents": [{"txt": "a"}]}, 400, r"documents\[0\] is an object without"),
        ({"query": "q", "documents": ["a"], "instruction": ""}, 400, "instruction is an empty"),
        ({"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, 422, "max_tokens_per_doc"),
        ({"query": "q", "documents": ["a"], "max_tokens_per_doc": "x"}, 422, "max_tokens_per_doc"),
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


# -- /v1/rerank through the shared batcher (issue 25) ---------------------------------------


def _post(
    base: str, query: str, docs: list[str], timeout: float = 120
) -> tuple[httpx.Response, float]:
    r = httpx.post(f"{base}/v1/rerank", json={"query": query, "documents": docs}, timeout=timeout)
    return r, time.monotonic()


def _scores(r: httpx.Response) -> np.ndarray:
    """relevance_score per document index."""
    results = r.json()["results"]
    out = np.full(len(results), np.nan)
    for x in results:
        out[x["index"]] = x["relevance_score"]
    return out


@pytest.fixture(scope="module")
def rr(rerank_fp32):  # type: ignore[no-untyped-def]
    return Reranker(rerank_fp32, device="cpu")


def test_concurrent_rerank_requests_share_forward_passes(rr):
    """16 requests of 8 documents in flight together: their 128 pairs take fewer forward passes
    than requests (one pass per request before the batcher), each answer still the offline
    Reranker's."""
    from tests.server.conftest import metric, serving, wait_until

    queries = [f"{QUERIES[i % 2]} (client {i})" for i in range(16)]
    docs = [DOCS[i:] + DOCS[:i] for i in range(16)]  # each client its own order
    app = create_app(rr, ServerConfig(max_wait_ms=0))
    batcher = app.state.batcher
    with serving(app) as base, ThreadPoolExecutor(16) as pool:
        batcher.pause()
        futures = [pool.submit(_post, base, q, d) for q, d in zip(queries, docs, strict=True)]
        wait_until(lambda: batcher.inflight == 16, what="16 requests in flight")
        batcher.pause(False)
        answers = [f.result(timeout=120)[0] for f in futures]
        passes = metric(base, "qexport_batch_rows_count")
        rows = metric(base, "qexport_batch_rows_sum")
    for q, d, r in zip(queries, docs, answers, strict=True):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(_scores(r), rr.score(q, d), atol=1e-5)
    assert rows == 128
    assert passes == batcher.batches and 1 <= passes < 16, passes


def test_one_document_is_answered_while_a_400_document_request_runs(rerank_fp32):
    """Another client's 400-document request is running (sliced into token-budget passes);
    a one-document request sent meanwhile joins the next pass, so it is answered while the big
    one still has passes to run (before the batcher: after the whole big request)."""
    from tests.server.conftest import serving, wait_until

    rr = Reranker(rerank_fp32, device="cpu", max_batch_tokens=1024)
    big_docs = [f"{d} ({i})" for i, d in enumerate(DOCS * 50)]
    app = create_app(rr, ServerConfig(max_wait_ms=0))
    batcher = app.state.batcher
    with serving(app) as base, ThreadPoolExecutor(2) as pool:
        big = pool.submit(_post, base, QUERIES[1], big_docs)
        wait_until(lambda: batcher.batches >= 1, what="the big request running")
        batcher.pause()  # hold its next pass until the small request is in flight
        assert not big.done() and batcher.inflight == 1
        small = pool.submit(_post, base, QUERIES[0], DOCS[:1])
        wait_until(lambda: batcher.inflight == 2, what="the small request in flight")
        batcher.pause(False)
        r_small, t_small = small.result(timeout=120)
        passes_at_small = batcher.batches
        r_big, t_big = big.result(timeout=120)
        passes = batcher.batches
    assert r_small.status_code == 200 and r_big.status_code == 200, (r_small.text, r_big.text)
    assert t_small < t_big
    assert passes_at_small < passes, (passes_at_small, passes)  # the big one was not done
    np.testing.assert_allclose(_scores(r_small), rr.score(QUERIES[0], DOCS[:1]), atol=1e-5)
    np.testing.assert_allclose(_scores(r_big)[:16], rr.score(QUERIES[1], big_docs[:16]), atol=1e-5)


def test_rerank_full_queue_answers_503(rr):
    from tests.server.conftest import serving, wait_until

    app = create_app(rr, ServerConfig(max_queue=1, max_wait_ms=0))
    batcher = app.state.batcher
    with serving(app) as base, ThreadPoolExecutor(1) as pool:
        batcher.pause()
        first = pool.submit(_post, base, QUERIES[0], DOCS[:3])
        wait_until(lambda: batcher.inflight == 1, what="the first request in flight")
        refused, _ = _post(base, QUERIES[1], DOCS[:2])
        batcher.pause(False)
        answered, _ = first.result(timeout=60)
    assert refused.status_code == 503, refused.text
    err = refused.json()["error"]
    assert err["type"] == "server_busy"
    assert "server busy: 1 requests already waiting" in err["message"]
    assert refused.headers["retry-after"] == "1"
    assert answered.status_code == 200, answered.text
    np.testing.assert_allclose(_scores(answered), rr.score(QUERIES[0], DOCS[:3]), atol=1e-5)


def test_rerank_expired_and_abandoned_requests_are_dropped_before_running(rr):
    from tests.server.conftest import metric, serving, wait_until

    app = create_app(rr, ServerConfig(max_wait_ms=0, request_timeout_s=1.0))
    batcher = app.state.batcher
    with serving(app) as base:
        batcher.pause()
        r, _ = _post(base, QUERIES[0], DOCS[:2])
        assert r.status_code == 504, r.text
        assert r.json()["error"]["type"] == "timeout"
        assert "not answered within 1 s" in r.json()["error"]["message"]
        with pytest.raises(httpx.ReadTimeout):  # the client gives up
            _post(base, QUERIES[1], DOCS[:2], timeout=0.2)
        wait_until(
            lambda: metric(base, 'qexport_refusals_total{reason="client_disconnected"}') == 1,
            what="the disconnect noticed",
        )
        batcher.pause(False)
        wait_until(lambda: batcher.inflight == 0, what="both dropped")
        assert batcher.batches == 0  # neither reached a forward pass
        assert metric(base, 'qexport_refusals_total{reason="deadline"}') == 1
        assert metric(base, "qexport_batch_rows_count") == 0
        ok, _ = _post(base, QUERIES[0], DOCS[:2])
        assert ok.status_code == 200 and batcher.batches == 1


def test_rerank_health_and_metric_tell_a_dead_batcher(rr):
    from tests.server.conftest import metric, serving

    app = create_app(rr)
    with serving(app) as base:
        h = httpx.get(f"{base}/health", timeout=10)
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["task"] == "rerank"
        assert metric(base, "qexport_batcher_up") == 1
        app.state.batcher.stop()
        r = httpx.get(f"{base}/health", timeout=10)
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert "batcher is not running" in r.json()["error"]
        r, _ = _post(base, QUERIES[0], DOCS[:2], timeout=10)
        assert r.status_code == 503 and "batcher is not running" in r.json()["error"]["message"]
        assert metric(base, "qexport_batcher_up") == 0
        assert metric(base, 'qexport_refusals_total{reason="batcher_down"}') == 1


def test_nan_logits_are_a_500_naming_them(rerank_nan):
    with TestClient(create_app(Reranker(rerank_nan, device="cpu"))) as c:
        r = c.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert r.status_code == 500, r.text
    assert r.json()["error"]["type"] == "server_error"
    assert "NaN/Inf for 2 pair" in r.json()["error"]["message"]
