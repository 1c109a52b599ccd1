"""`--api-key` / QEXPORT_API_KEY against a real `qexport serve`: the `openai` client with the
key works, without or with a wrong key it gets 401 in OpenAI's shape; /health stays open;
/metrics needs the key and counts the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qexport.server.run import exposure_warning
from tests.server.conftest import httpx, metric, qexport_serve

KEY = "s3cret-key-for-tests"


def test_api_key_guards_every_route_but_health(tiny_artifact, emb, tmp_path):
    openai = pytest.importorskip("openai")
    with qexport_serve(tiny_artifact, tmp_path, env={"QEXPORT_API_KEY": KEY}) as srv:
        good = openai.OpenAI(base_url=f"{srv.base}/v1", api_key=KEY, max_retries=0)
        got = good.embeddings.create(model="tiny-fp32", input=["hello", "world"])
        vecs = np.array([d.embedding for d in got.data], dtype=np.float32)
        np.testing.assert_allclose(vecs, emb.embed(["hello", "world"]), atol=1e-5)

        bad = openai.OpenAI(base_url=f"{srv.base}/v1", api_key=KEY + "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="invalid API key"):
            bad.embeddings.create(model="tiny-fp32", input="hello")

        for path in ("/v1/models", "/metrics", "/docs", "/openapi.json", "/nowhere"):
            r = httpx.get(f"{srv.base}{path}", timeout=10)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert "missing API key" in r.json()["error"]["message"]
            assert r.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer", f"Basic {KEY}", f"Bearer {KEY[:-1]}", f"bearer  {KEY}"):
            r = httpx.post(f"{srv.base}/v1/embeddings", json={"input": "x"},
                           headers={"Authorization": header}, timeout=10)  # fmt: skip
            assert r.status_code == 401, header

        assert httpx.get(f"{srv.base}/health", timeout=10).status_code == 200
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{srv.base}/v1/models", headers=auth, timeout=10).status_code == 200
        assert metric(srv.base, 'qexport_refusals_total{reason="unauthorized"}', auth) == 10
        assert (
            metric(srv.base, 'qexport_requests_total{route="/v1/embeddings",status="200"}', auth)
            == 1
        )


def test_exposure_warning_only_off_loopback_without_key():
    assert exposure_warning("127.0.0.1", "127.0.0.1", None) is None
    assert exposure_warning("::1", "::1", None) is None
    assert exposure_warning("0.0.0.0", "0.0.0.0", "k") is None
    warning = exposure_warning("0.0.0.0", "0.0.0.0", None)
    assert warning is not None and "without --api-key" in warning
