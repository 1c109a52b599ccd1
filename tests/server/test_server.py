"""The OpenAI-compatible server, driven by real clients over loopback: the `openai` package
against `qexport serve` gets Embedder.embed's vectors (float and base64); a bounded load test
with concurrent clients loses nothing and batches requests together; a tiny queue answers
503; bad requests get 4xx with a message naming the problem."""

from __future__ import annotations

import base64
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from qexport.runtime import Embedder  # noqa: E402
from qexport.server.app import ServerConfig, create_app  # noqa: E402
from tests.server.conftest import qexport_serve, serving, wait_until  # noqa: E402
from tests.texts import MIXED  # noqa: E402

TEXTS = [*MIXED, *(f"request text number {i}: " + "word " * (i % 17) for i in range(24))]


@pytest.fixture(scope="module")
def expected(emb):
    # one text at a time: independent of how the server groups requests
    full = np.concatenate([emb.embed([t]) for t in TEXTS])
    small = np.concatenate([emb.embed([t], dim=32) for t in TEXTS])
    return {None: full, 32: small}


def test_openai_client_against_qexport_serve(tiny_artifact, expected, tmp_path):
    openai = pytest.importorskip("openai")
    with qexport_serve(tiny_artifact, tmp_path, "--model-name", "tiny-test") as srv:
        client = openai.OpenAI(base_url=f"{srv.base}/v1", api_key="unused", max_retries=0)
        got = client.embeddings.create(model="tiny-test", input=TEXTS, encoding_format="float")
        assert got.model == "tiny-test"
        assert [d.index for d in got.data] == list(range(len(TEXTS)))
        vecs = np.array([d.embedding for d in got.data], dtype=np.float32)
        np.testing.assert_allclose(vecs, expected[None], atol=1e-5)
        n_tokens = sum(len(r) for r in Embedder(tiny_artifact, device="cpu").tokenize(TEXTS)[0])
        assert got.usage.prompt_tokens == got.usage.total_tokens == n_tokens

        b64 = client.embeddings.create(
            model="tiny-test", input=TEXTS[:5], encoding_format="base64", dimensions=32
        )
        vecs = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in b64.data])
        np.testing.assert_allclose(vecs, expected[32][:5], atol=1e-5)

        one = client.embeddings.create(model="tiny-test", input=TEXTS[3], encoding_format="float")
        np.testing.assert_allclose(one.data[0].embedding, expected[None][3], atol=1e-5)

        with pytest.raises(openai.BadRequestError, match="dimensions 100 is not allowed"):
            client.embeddings.create(model="tiny-test", input="x", dimensions=100)


@pytest.mark.slow
def test_concurrent_clients_all_answered_correctly_and_batched(emb, expected):
    app = create_app(emb, ServerConfig(max_wait_ms=5))
    clients, per_client = 8, 25
    with serving(app) as base:

        def client(seed: int) -> int:
            rng = np.random.default_rng(seed)
            ok = 0
            with httpx.Client(base_url=base, timeout=60) as http:
                for _ in range(per_client):
                    idx = rng.choice(len(TEXTS), size=int(rng.integers(1, 5)), replace=False)
                    dim = [None, 32][int(rng.integers(0, 2))]
                    body = {
                        "input": [TEXTS[i] for i in idx],
                        "model": "tiny-fp32",
                        "dimensions": dim,
                    }
                    r = http.post("/v1/embeddings", json=body)
                    assert r.status_code == 200, r.text
                    data = r.json()["data"]
                    vecs = np.array([d["embedding"] for d in data], dtype=np.float32)
                    np.testing.assert_allclose(vecs, expected[dim][idx], atol=1e-5)
                    ok += 1
            return ok

        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            answered = sum(pool.map(client, range(clients)))
        assert time.monotonic() - start < 120
        health = httpx.get(f"{base}/health").json()
    assert answered == clients * per_client
    assert health["requests"] == clients * per_client
    # concurrent requests shared forward passes
    assert health["batches"] < health["requests"], health


def test_full_queue_answers_503(emb):
    """Deterministic: the batcher is paused, so the first request stays in flight and holds
    the only slot; the second is refused; on resume the first is answered."""
    app = create_app(emb, ServerConfig(max_queue=1, max_wait_ms=0))
    batcher = app.state.batcher
    with serving(app) as base, ThreadPoolExecutor(1) as pool:
        batcher.pause()
        first = pool.submit(
            httpx.post, f"{base}/v1/embeddings", json={"input": TEXTS[:2]}, timeout=60
        )
        wait_until(lambda: batcher.inflight == 1, what="the first request in flight")
        refused = httpx.post(f"{base}/v1/embeddings", json={"input": TEXTS[2]}, timeout=60)
        batcher.pause(False)
        answered = first.result(timeout=60)
    assert refused.status_code == 503, refused.text
    err = refused.json()["error"]
    assert (
        err["type"] == "server_busy" and "server busy: 1 requests already waiting" in err["message"]
    )
    assert refused.headers["retry-after"] == "1"
    assert answered.status_code == 200, answered.text
    vecs = np.array([d["embedding"] for d in answered.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vecs, emb.embed(TEXTS[:2]), atol=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input": []}, 400, "input is empty"),
        ({"input": ""}, 400, "input is an empty string"),
        ({"input": ["ok", ""]}, 400, r"input\[1\] is an empty string"),
        ({"input": ["ok", 7]}, 400, r"input\[1\] is int, not a string"),
        ({"input": [[1, 2, 3]]}, 400, r"input\[0\] is list, not a string"),
        ({"input": ["a"] * 5}, 413, "input has 5 items; at most 4 per request"),
        (
            {"input": ["word " * 300]},
            413,
            r"input has at least \d+ tokens; at most 200 per request",
        ),
        ({"input": "x", "dimensions": 100}, 400, r"dimensions 100 is not allowed.*\[32, 64, 128\]"),
        ({"input": "x", "encoding_format": "hex"}, 422, "encoding_format: Input should be"),
        ({"model": "m"}, 422, "input: Field required"),
        ({"input": 5}, 422, "input"),
    ],
)
def test_bad_requests_name_the_problem(emb, body, status, message):
    app = create_app(emb, ServerConfig(max_items=4, max_request_tokens=200))
    with TestClient(app) as client:
        r = client.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] in ("invalid_request_error", "request_too_large")
    assert re.search(message, err["message"]), err["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"input": "caf\xe9"}', r"not valid UTF-8 \(byte 14\)"),  # latin-1, not UTF-8
        (b'{"input": ["ok", "a\\ud800b"]}', r"input\[1\] is not valid Unicode.*surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 16 levels"),  # refused unparsed
    ],
)
def test_undecodable_bodies_are_400_in_openai_shape(emb, content, message):
    with TestClient(create_app(emb)) as client:
        r = client.post(
            "/v1/embeddings", content=content, headers={"content-type": "application/json"}
        )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and re.search(message, err["message"]), err


def test_invalid_json_and_health(emb):
    with TestClient(create_app(emb, ServerConfig(model_name="named"))) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "named" and health["dim"] == 128
        assert client.get("/v1/models").json()["data"][0]["id"] == "named"
        missing = client.get("/v2/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"
