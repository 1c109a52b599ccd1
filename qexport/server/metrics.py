"""Prometheus metrics (`GET /metrics`), in a registry of the app's own (never the global one),
and a pure ASGI middleware that counts every request by route and status and times it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = ("/v1/embeddings", "/v1/rerank", "/v2/rerank", "/v1/models", "/health", "/metrics",
          "/embed", "/rerank", "/", "/info", "/tokenize")  # fmt: skip
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = tuple(2**k for k in range(4, 17))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "qexport_requests", "HTTP requests by route and status", ("route", "status"), registry=r
        )
        self.latency = Histogram(
            "qexport_request_seconds",
            "time from request to response, by route",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Gauge("qexport_queue_depth", "requests in flight in the batcher", registry=r)
        self.batch_rows = Histogram(
            "qexport_batch_rows",
            "rows (texts or pairs) per forward pass",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "qexport_batch_tokens", "tokens per forward pass", buckets=TOKEN_BUCKETS, registry=r
        )
        self.tokens = Counter("qexport_tokens", "tokens run through the model", registry=r)
        self.refusals = Counter(
            "qexport_refusals", "requests refused or dropped, by reason", ("reason",), registry=r
        )
        self.alive = Gauge("qexport_batcher_up", "1 while the batcher runs", registry=r)

    def bind(self, inflight: Callable[[], float], alive: Callable[[], float]) -> None:
        self.queue.set_function(inflight)
        self.alive.set_function(alive)

    def on_batch(self, rows: int, tokens: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens)
        self.tokens.inc(tokens)

    def refuse(self, reason: str) -> None:
        self.refusals.labels(reason).inc()


class MetricsMiddleware:
    """Outermost: sees every answer, 401s and 413s included."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
