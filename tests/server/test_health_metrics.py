"""/health turns 503 when the batcher is not running (and requests are refused, not hung);
/metrics exposes requests by route and status, latencies, batch sizes, tokens and refusals,
consistent with what the clients saw."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from qexport.server.app import ServerConfig, create_app
from tests.server.conftest import httpx, serving


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_health_is_503_when_the_batcher_is_not_running(emb):
    app = create_app(emb)
    with serving(app) as base:
        assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
        app.state.batcher.stop()
        r = httpx.get(f"{base}/health", timeout=10)
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert "batcher is not running" in r.json()["error"]
        r = httpx.post(f"{base}/v1/embeddings", json={"input": "x"}, timeout=10)
        assert r.status_code == 503 and "batcher is not running" in r.json()["error"]["message"]
        assert samples(base)[("qexport_batcher_up", ())] == 0


def test_metrics_count_what_clients_saw(emb):
    app = create_app(emb, ServerConfig(max_items=3))
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        tokens = 0
        for texts in (["one"], ["two", "three words here"], ["x" * 300]):
            r = http.post("/v1/embeddings", json={"input": texts})
            assert r.status_code == 200
            tokens += r.json()["usage"]["total_tokens"]
        assert http.post("/v1/embeddings", json={"input": ["a"] * 4}).status_code == 413
        assert http.post("/v1/embeddings", json={"input": ""}).status_code == 400
        assert http.get("/health").status_code == 200
        m = samples(base)
    req = "qexport_requests_total"
    assert m[(req, (("route", "/v1/embeddings"), ("status", "200")))] == 3
    assert m[(req, (("route", "/v1/embeddings"), ("status", "413")))] == 1
    assert m[(req, (("route", "/v1/embeddings"), ("status", "400")))] == 1
    assert m[(req, (("route", "/health"), ("status", "200")))] == 1
    assert m[("qexport_request_seconds_count", (("route", "/v1/embeddings"),))] == 5
    assert m[("qexport_tokens_total", ())] == tokens
    assert m[("qexport_batch_tokens_sum", ())] == tokens
    assert m[("qexport_batch_rows_sum", ())] == 4
    assert m[("qexport_queue_depth", ())] == 0 and m[("qexport_batcher_up", ())] == 1
    assert m[("qexport_refusals_total", (("reason", "too_many_items"),))] == 1
    assert m[("qexport_refusals_total", (("reason", "bad_input"),))] == 1
