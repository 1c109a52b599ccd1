"""Issue 27 against a real `qexport serve` and real clients: unusable API keys refused at
start; what JSON parsing may build bounded before it runs (server RSS measured by psutil for
the hostile shapes of the issue); every JSON parse failure a 400 in the API's error shape and
one log line; requests dropped at their deadline counted as `deadline`."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.rerank.conftest import rerank_ckpt, rerank_fp32, reranker_tokenizer  # noqa: F401
from tests.server.conftest import free_port, httpx, metric, qexport_serve, serve_command, wait_until
from tests.server.test_limits import GROWTH_LIMIT, MiB, peak_rss_during, post_or_broken

psutil = pytest.importorskip("psutil")

DEFAULT_BODY = 4 * MiB  # qexport serve's default --max-body-bytes
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "args, env, expected",
    [
        ((), {"QEXPORT_API_KEY": ""}, "$QEXPORT_API_KEY is empty"),
        ((), {"QEXPORT_API_KEY": "  "}, "$QEXPORT_API_KEY has leading or trailing whitespace"),
        ((), {"QEXPORT_API_KEY": "k3y\t"}, "$QEXPORT_API_KEY has leading or trailing whitespace"),
        (("--api-key", "abc "), {}, "--api-key has leading or trailing whitespace"),
        (("--api-key", ""), {"QEXPORT_API_KEY": "fine"}, "--api-key is empty"),
        (("--api-key", "k\u00e9y"), {}, "--api-key holds characters an HTTP header cannot"),
    ],
)
def test_unusable_api_keys_are_refused_at_start(tiny_artifact, args, env, expected):
    environ = {k: v for k, v in os.environ.items() if k != "QEXPORT_API_KEY"}
    proc = subprocess.run(
        serve_command(tiny_artifact, "--port", str(free_port()), *args),
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout


def _lists(size: int) -> bytes:
    """`{"input": "x", "foo": [[], [], ...]}` of about `size` bytes."""
    head, tail = b'{"input": "x", "foo": [', b"[]]}"
    return head + b"[]," * ((size - len(head) - len(tail)) // 3) + tail


def _objects(size: int) -> bytes:
    """`{"input": [{}, {}, ...]}` of about `size` bytes."""
    head, tail = b'{"input": [', b"{}]}"
    return head + b"{}," * ((size - len(head) - len(tail)) // 3) + tail


def _refused_for_values(r: object) -> None:
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert "holds more than 8448 JSON values" in err["message"], err
    assert err["type"] == "request_too_large"


def test_hostile_json_shapes_cost_bounded_memory(tiny_artifact, tmp_path):
    """The shapes of issue 27 (main: +1.6 GB for one 60 MiB body of `[],`): refused before
    json.loads builds them; each measured with psutil, each under 200 MB of growth."""
    growth: dict[str, int] = {}

    def measure(name: str, pid: int, action) -> object:  # type: ignore[no-untyped-def]
        r, before, peak = peak_rss_during(pid, action)
        growth[name] = peak - before
        return r

    with qexport_serve(tiny_artifact, tmp_path) as srv:  # the default limits
        url, pid = f"{srv.base}/v1/embeddings", srv.proc.pid
        under = DEFAULT_BODY - 1024  # within the body limit: the value count refuses
        for name, body in (("lists", _lists(under)), ("objects", _objects(under))):
            r = measure(name, pid, lambda b=body: post_or_broken(url, content=b, headers=JSON))
            _refused_for_values(r)

        bodies = [_lists(under), _objects(under), _lists(under)]
        with ThreadPoolExecutor(3) as pool:
            go = lambda: list(  # noqa: E731
                pool.map(lambda b: post_or_broken(url, content=b, headers=JSON), bodies)
            )
            for r in measure("three at once", pid, go):  # type: ignore[attr-defined]
                _refused_for_values(r)

        # the 60 MiB bodies: past the default body limit, refused before reading
        r = measure("60 MiB", pid, lambda: post_or_broken(url, content=_lists(60 * MiB)))
        if isinstance(r, httpx.Response):
            assert r.status_code == 413 and "at most 4194304" in r.text, r.text
        ok = httpx.post(url, json={"input": ["still", "serving"]}, timeout=60)
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2

    # the same 60 MiB shapes with the body limit of before (64 MiB): the count still holds
    with qexport_serve(tiny_artifact, tmp_path, "--max-body-bytes", str(64 * MiB)) as srv:
        url, pid = f"{srv.base}/v1/embeddings", srv.proc.pid
        for name, body in (("lists 60 MiB", _lists(60 * MiB)), ("objs 60 MiB", _objects(60 * MiB))):
            r = measure(name, pid, lambda b=body: post_or_broken(url, content=b, headers=JSON))
            _refused_for_values(r)
        assert metric(srv.base, 'qexport_refusals_total{reason="too_many_items"}') == 2

    print({k: f"{v / MiB:.0f} MiB" for k, v in growth.items()})
    for name, grew in growth.items():
        assert grew < GROWTH_LIMIT, (name, grew / MiB)


BAD_BODIES = [
    (b'{"input": "x", "dimensions": ' + b"9" * 4301 + b"}", "an integer has 4301 digits"),
    (b'{"input": "x", "ignored": -' + b"1" * 5000 + b"}", "an integer has 5000 digits"),
    (b'{"input": "x", "ignored": NaN}', "NaN is not a JSON value"),
    (b'{"input": "x", "ignored": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"input": "x", "ignored": 1e999}', "overflows a float"),
    (b'{"input": "x",}', "Expecting property name"),
    (b'{"input": "x"', "Expecting ',' delimiter"),
    (b'{"input": "\xff"}', "not valid UTF-8 (byte 11)"),
    (b'{"input": "x", "deep": ' + b"[" * 17 + b"]" * 17 + b"}", "nests deeper than 16 levels"),
    (b'{"input": "x", "deep": ' + b"[" * 5000 + b"}", "nests deeper than 16 levels"),
]


RERANK_BAD_BODIES = [
    (b'{"query": "q", "documents": ["d"], "top_n": ' + b"9" * 4400 + b"}", "4400 digits"),
    (b'{"query": "q", "documents": ["d"], "x": [' + b"9" * 4400 + b"]}", "4400 digits"),
    (b'{"query": "q", "documents": ["d"], "top_n": NaN}', "NaN is not a JSON value"),
]


def _parse_failures(artifact, path: str, bodies, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each body a 400 naming the problem, and one access-log line each, no traceback."""
    port = free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / f"serve-{port}.log"
    cmd = [c for c in serve_command(artifact, "--port", str(port)) if c != "-q"]  # access log
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _healthy(base, proc), timeout=90, what="qexport serve up")
            for body, message in bodies:
                r = httpx.post(f"{base}{path}", content=body, headers=JSON, timeout=60)
                assert r.status_code == 400, (body[:60], r.text)
                err = r.json()["error"]
                assert err["type"] == "invalid_request_error", err
                assert message in err["message"] and err["code"] is None, (body[:60], err)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    assert not [ln for ln in lines if "Traceback" in ln or "ERROR" in ln], lines
    logged = [line for line in lines if f"POST {path}" in line]
    assert len(logged) == len(bodies) and all(" 400" in line for line in logged), logged
    assert len(lines) < len(bodies) + 12, lines  # startup lines + one per request


def test_json_parse_failures_are_400_and_one_log_line(tiny_artifact, tmp_path):
    _parse_failures(tiny_artifact, "/v1/embeddings", BAD_BODIES, tmp_path)


def test_rerank_json_parse_failures_are_400_and_one_log_line(rerank_fp32, tmp_path):  # noqa: F811
    _parse_failures(rerank_fp32, "/v1/rerank", RERANK_BAD_BODIES, tmp_path)


def _healthy(base: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "qexport serve exited"
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_requests_dropped_at_their_deadline_are_counted_as_deadline(tiny_artifact, tmp_path):
    """One long request past a 0.5 s deadline: 504, and the batcher drops its rows with reason
    `deadline`, not `client_disconnected`. The request is 256 rows of ~850 tokens, each its own
    forward pass (--max-batch-tokens 64): about 3 s of work on an idle 2-core machine (0.6 s at
    ~290 tokens a row was too little: an idle CI machine answered it within 1 s)."""
    texts = [f"text number {i} " + "lorem ipsum dolor sit amet " * 30 for i in range(256)]
    args = ("--request-timeout-s", "0.5", "--max-batch-tokens", "64")
    with qexport_serve(tiny_artifact, tmp_path, *args) as srv:
        r = httpx.post(f"{srv.base}/v1/embeddings", json={"input": texts}, timeout=120)
        assert r.status_code == 504, r.text
        assert "not answered within 0.5 s" in r.json()["error"]["message"]
        wait_until(
            lambda: metric(srv.base, 'qexport_refusals_total{reason="dropped_deadline"}') == 1,
            what="the drop counted",
        )
        assert metric(srv.base, 'qexport_refusals_total{reason="deadline"}') == 1
        for reason in ("client_disconnected", "dropped_client_disconnected"):
            assert metric(srv.base, f'qexport_refusals_total{{reason="{reason}"}}') == 0

        # a client that leaves before its answer is still counted as one that left
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.base}/v1/embeddings", json={"input": texts}, timeout=0.2)
        wait_until(
            lambda: (
                metric(srv.base, 'qexport_refusals_total{reason="dropped_client_disconnected"}')
                == 1
            ),
            what="the disconnect counted",
        )
        assert metric(srv.base, 'qexport_refusals_total{reason="dropped_deadline"}') == 1
