"""FastAPI app: `POST /v1/embeddings` (OpenAI-compatible), `GET /v1/models`, `GET /health`,
`GET /metrics` (Prometheus).

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a message
that names the problem: 400 bad input, dimensions, JSON or UTF-8; 401 missing or wrong API
key; 408 body not received in time; 413 too many items / tokens / bytes (counted while
reading, chunked bodies included); 422 a malformed body; 503 queue full or batcher down; 504
the request's deadline passed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from ..runtime import Embedder
from .auth import AuthMiddleware
from .batcher import Batcher, Job
from .config import ServerConfig
from .errors import ApiError, error_response
from .metrics import Metrics, MetricsMiddleware
from .schemas import EmbeddingData, EmbeddingRequest, EmbeddingResponse, ErrorResponse, Usage
from .tokens import BoundedTokenizer, check_texts


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


async def _receive_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected", reason="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, f"request body passed {limit} bytes; at most {limit}", reason="body_too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_body(request: Request, cfg: ServerConfig) -> bytes:
    """The body, counted while it arrives: 413 as soon as it passes the limit (chunked too),
    408 when it has not all arrived within the read timeout."""
    limit = cfg.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(
            413, f"request body has {length} bytes; at most {limit}", reason="body_too_large"
        )
    try:
        return await asyncio.wait_for(_receive_body(request, limit), cfg.read_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"request body not received within {cfg.read_timeout_s:g} s", reason="read_timeout"
        ) from None


# a JSON string token; counted in large bodies before parsing (json.loads of millions of
# tiny strings costs ~13x the body: 8 MiB of `"ab",` -> 103 MB)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # ~40 ms per MiB
SCAN_ABOVE = 1 << 20  # bodies larger than this are scanned, and parsed off the event loop
EXTRA_STRINGS = 64  # field names and values besides the inputs


def _check_string_count(body: bytes, max_items: int) -> None:
    if len(body) <= SCAN_ABOVE:
        return
    limit = max_items + EXTRA_STRINGS
    for n, _ in enumerate(_JSON_STRING.finditer(body), 1):
        if n > limit:
            raise ApiError(
                413,
                f"request body holds more than {limit} strings; at most {max_items} inputs "
                "per request",
                "input",
                reason="too_many_items",
            )


def parse_request(body: bytes, max_items: int, model: type[Any] = EmbeddingRequest) -> Any:
    """The body as `model` (a pydantic model): 400 for bad UTF-8 or JSON, 422 for bad fields."""
    _check_string_count(body, max_items)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"request body is not valid UTF-8 (byte {exc.start})", reason="bad_body"
        ) from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON", reason="bad_body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, _validation_message(exc), reason="bad_body") from None


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _encode(vectors: np.ndarray, fmt: str, name: str, tokens: int) -> Response:
    if fmt == "base64":
        items: list[Any] = [
            base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors
        ]
    else:
        items = vectors.tolist()
    resp = EmbeddingResponse.model_construct(
        object="list",
        data=[
            EmbeddingData.model_construct(object="embedding", index=i, embedding=e)
            for i, e in enumerate(items)
        ],
        model=name,
        usage=Usage.model_construct(prompt_tokens=tokens, total_tokens=tokens),
    )
    return Response(resp.model_dump_json(), media_type="application/json")


class Service:
    """What the routes do; create_app wires it to FastAPI."""

    def __init__(self, embedder: Embedder, cfg: ServerConfig, metrics: Metrics) -> None:
        self.embedder, self.cfg, self.metrics = embedder, cfg, metrics
        self.name = cfg.model_name or embedder.path.resolve().name
        self.tokenizer = BoundedTokenizer(embedder.encoder)
        self.batcher = Batcher(
            embedder,
            max_wait_s=cfg.max_wait_ms / 1000,
            max_queue=cfg.max_queue,
            max_batch_tokens=embedder.max_batch_tokens,
            long_row_tokens=cfg.long_row_tokens,
            on_batch=metrics.on_batch,
            on_drop=lambda reason: metrics.refuse("dropped_" + reason),
        )
        metrics.bind(lambda: self.batcher.inflight, lambda: float(self.batcher.alive))

    def health(self) -> JSONResponse:
        emb, b = self.embedder, self.batcher
        body = {
            "status": "ok" if b.alive else "unavailable",
            "model": self.name,
            "dim": emb.dim,
            "allowed_dims": emb.manifest.allowed_dims,
            "max_length": emb.encoder.max_length,
            "providers": emb.providers,
            "queue": b.inflight,
            "max_queue": self.cfg.max_queue,
            "requests": b.requests,
            "batches": b.batches,
        }
        if not b.alive:
            body["error"] = f"the batcher is not running ({b.error or 'stopped'})"
        return JSONResponse(body, status_code=200 if b.alive else 503)

    def _submit(self, req: EmbeddingRequest, ids: list[list[int]], types: list[list[int]],
                deadline: float) -> Job:  # fmt: skip
        loop = asyncio.get_running_loop()
        job = Job(ids, types, req.dimensions, loop.create_future(), loop, deadline=deadline)
        try:
            self.batcher.submit(job)
        except queue.Full:
            raise ApiError(
                503,
                f"server busy: {self.cfg.max_queue} requests already waiting; retry later",
                reason="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except RuntimeError as exc:
            raise ApiError(503, str(exc), reason="batcher_down") from None
        return job

    async def embeddings(self, request: Request) -> Response:
        cfg, emb = self.cfg, self.embedder
        deadline = time.monotonic() + cfg.request_timeout_s
        body = await read_body(request, cfg)
        if len(body) > SCAN_ABOVE:
            req = await run_in_threadpool(parse_request, body, cfg.max_items)
        else:
            req = parse_request(body, cfg.max_items)
        texts = check_texts(req.input, cfg.max_items)
        if req.dimensions is not None and req.dimensions not in emb.manifest.allowed_dims:
            raise ApiError(
                400,
                f"dimensions {req.dimensions} is not allowed for this model; allowed: "
                f"{emb.manifest.allowed_dims}",
                "dimensions",
                reason="bad_input",
            )
        ids, types = await run_in_threadpool(self.tokenizer.tokenize, texts, cfg.max_request_tokens)
        job = self._submit(req, ids, types, deadline)
        watcher = asyncio.ensure_future(_until_disconnect(request))
        try:
            waiting: set[asyncio.Future[Any]] = {job.future, watcher}
            done, _ = await asyncio.wait(
                waiting,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watcher.cancel()
        late = ApiError(
            504,
            f"request not answered within {cfg.request_timeout_s:g} s; retry later",
            reason="deadline",
        )
        if job.future not in done:
            self.batcher.cancel(job)
            if watcher in done:  # nobody is listening any more
                self.metrics.refuse("client_disconnected")
                return Response(status_code=499)
            raise late
        try:
            vectors: np.ndarray = job.future.result()
        except TimeoutError:  # the batcher dropped it at the deadline first
            raise late from None
        except FloatingPointError as exc:
            return error_response(500, str(exc))
        except RuntimeError as exc:  # the batcher stopped while the request was in flight
            raise ApiError(503, str(exc), reason="batcher_down") from None
        return _encode(vectors, req.encoding_format, self.name, job.tokens)


def _add_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.reason is not None:
            metrics.refuse(exc.reason)
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}")


def base_app(
    title: str,
    cfg: ServerConfig,
    metrics: Metrics,
    health: Callable[[], JSONResponse],
    name: str,
    lifespan: Any = None,
) -> FastAPI:
    """What every qexport server shares: OpenAI-shaped errors, auth, metrics, `/metrics`,
    `/health` and `/v1/models`; the caller adds its task's route."""
    docs = {} if cfg.api_key is None else {"docs_url": None, "redoc_url": None}
    app = FastAPI(title=title, lifespan=lifespan, **docs)  # type: ignore[arg-type]
    app.state.metrics = metrics
    _add_handlers(app, metrics)
    if cfg.api_key is not None:
        app.add_middleware(AuthMiddleware, api_key=cfg.api_key, on_refuse=metrics.refuse)
    if cfg.metrics:
        app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 401s too

        @app.get("/metrics")
        async def prometheus() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health_route() -> JSONResponse:
        return health()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "qexport"}],
        }

    return app


def post_route(
    app: FastAPI,
    path: str,
    request_model: type[BaseModel],
    response_model: type[BaseModel],
    handler: Callable[[Request], Awaitable[Response]],
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


def create_app(embedder: Embedder, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    cfg.check()
    metrics = Metrics()
    svc = Service(embedder, cfg, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.batcher.start()
        yield
        svc.batcher.stop()

    app = base_app("qexport embeddings", cfg, metrics, svc.health, svc.name, lifespan)
    app.state.batcher = svc.batcher
    app.state.embedder = embedder

    post_route(app, "/v1/embeddings", EmbeddingRequest, EmbeddingResponse, svc.embeddings)

    return app
