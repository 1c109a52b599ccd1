"""The FastAPI app: one app for every task and for several artifacts at once.

Every app has `GET /v1/models` (every served name), `GET /health` (per model when several
are served), `GET /metrics` (Prometheus; per-model families labelled `model` when several),
auth and OpenAI-shaped errors, `{"error": {"message", "type", "param", "code"}}`, with a
message that names the problem: 400 bad input, dimensions, JSON or UTF-8; 401 missing or wrong
API key; 404 a `model` not served (code `model_not_found`); 408 body not received in time;
413 too many items / tokens / bytes (counted while reading, chunked bodies included); 422 a
malformed body; 500 NaN/Inf from the model; 503 queue full or batcher down; 504 the request's
deadline passed. Each served task adds its routes (`ROUTES`): `POST /v1/embeddings`
(OpenAI-compatible, `server/embed.py`) for embedding artifacts, `POST /v1/rerank` and
`POST /v2/rerank` (`server/rerank.py`) for rerankers; TEI's routes (`server/tei.py`) are
always there, with TEI's error body. Each artifact has its own `Service` and batcher
(`server/service.py`, `server/batcher.py`); `server/models.py` routes requests by `model`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..runtime import Embedder, Reranker
from ..tasks import EMBED, RERANK, Task
from . import embed, rerank, tei
from .auth import AuthMiddleware
from .config import ServerConfig
from .errors import ApiError, error_response
from .metrics import Metrics, MetricsMiddleware
from .models import Registry
from .schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse
from .service import Model, Service

__all__ = ["ROUTES", "Route", "ServerConfig", "create_app"]

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A task's OpenAI-style routes: their paths and schemas, the handler built over the
    registry, and the task's lines in /health."""

    paths: tuple[str, ...]
    request: type[BaseModel]
    response: type[BaseModel]
    handler: Callable[[Registry, ServerConfig], Handler]
    details: Callable[[Any], dict[str, Any]] | None = None  # the task's lines in /health


ROUTES: dict[str, Route] = {
    EMBED.name: Route(
        ("/v1/embeddings",), EmbeddingRequest, EmbeddingResponse, embed.handler, embed.details
    ),
    RERANK.name: Route(
        ("/v1/rerank", "/v2/rerank"),
        rerank.RerankRequest,
        rerank.RerankResponse,
        rerank.handler,
    ),
}


def _add_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.reason is not None:
            metrics.refuse(exc.reason)
        return error_response(exc.status, exc.message, exc.param, exc.headers, exc.code)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}")


def base_app(
    title: str,
    cfg: ServerConfig,
    registry: Registry,
    lifespan: Any = None,
) -> FastAPI:
    """What every qexport server shares: OpenAI-shaped errors, auth, metrics, `/metrics`,
    `/health` and `/v1/models`; the caller adds the tasks' routes."""
    docs = {} if cfg.api_key is None else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title=title, lifespan=lifespan, **docs)  # type: ignore[arg-type]
    metrics = registry.metrics
    app.state.metrics = metrics
    _add_handlers(app, metrics)
    if cfg.api_key is not None:
        app.add_middleware(AuthMiddleware, api_key=cfg.api_key, on_refuse=metrics.refuse)
    if cfg.metrics:
        app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 401s too
        exposed = registry.registry()

        @app.get("/metrics")
        async def prometheus() -> Response:
            return Response(generate_latest(exposed), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health_route() -> JSONResponse:
        return registry.health()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {"id": s.name, "object": "model", "created": 0, "owned_by": "qexport"} for s in registry
        ]
        return {"object": "list", "data": data}

    return app


def post_route(
    app: FastAPI,
    path: str,
    request_model: type[BaseModel],
    response_model: type[BaseModel],
    handler: Handler,
) -> None:
    """POST `path`, answered by `handler`, which reads and checks the body itself (bounded
    reads, its own error shape); the request schema is declared for the OpenAPI page, and the
    route is named after the handler."""

    @app.post(
        path,
        name=handler.__name__,
        response_model=response_model,
        responses={c: {"model": ErrorResponse} for c in (400, 401, 408, 413, 422, 503, 504)},
        openapi_extra={
            "requestBody": {
                "content": {"application/json": {"schema": request_model.model_json_schema()}},
                "required": True,
            }
        },
    )
    async def route(request: Request) -> Response:
        return await handler(request)


def _tei_routes(app: FastAPI, registry: Registry, cfg: ServerConfig) -> None:
    routes, api = tei.handlers(registry, cfg)
    for path, fn in routes.items():
        app.add_api_route(path, fn, methods=["POST"], name=f"tei_{fn.__name__}")

    @app.get("/info")
    async def info(model: str | None = None) -> JSONResponse:
        try:
            return JSONResponse(api.info(model))
        except (ApiError, tei.TeiError) as exc:
            return tei.tei_response(exc, registry)


def _load(named: Sequence[tuple[str | None, Model]], cfg: ServerConfig) -> Registry:
    services = []
    for name, model in named:
        task: Task = RERANK if isinstance(model, Reranker) else EMBED
        one = replace(cfg, model_name=name or cfg.model_name)
        metrics = Metrics() if len(named) > 1 else None
        services.append(Service(model, task, one, metrics or Metrics(), ROUTES[task.name].details))
    app_metrics = services[0].metrics if len(services) == 1 else Metrics()
    return Registry(services, app_metrics)


def create_app(
    model: Model | Sequence[tuple[str | None, Model]], config: ServerConfig | None = None
) -> FastAPI:
    """The app serving `model` (an Embedder or a Reranker), or several `(name, model)` pairs
    (name None: the folder's name): the shared routes, and each served task's routes."""
    cfg = config or ServerConfig()
    cfg.check()
    named = [(None, model)] if isinstance(model, (Embedder, Reranker)) else list(model)
    if not named:
        raise ValueError("no model to serve")
    registry = _load(named, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for svc in registry:
            svc.batcher.start()
        yield
        for svc in registry:
            svc.batcher.stop()

    tasks = {s.task.name for s in registry}
    title = "qexport " + " + ".join(sorted(tasks))
    app = base_app(title, cfg, registry, lifespan)
    first = next(iter(registry))
    app.state.registry = registry
    app.state.service, app.state.batcher, app.state.model = first, first.batcher, first.model
    for task in sorted(tasks):
        route = ROUTES[task]
        for path in route.paths:
            post_route(app, path, route.request, route.response, route.handler(registry, cfg))
    _tei_routes(app, registry, cfg)
    return app
