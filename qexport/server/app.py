"""FastAPI app: `POST /v1/embeddings` (OpenAI-compatible), `GET /v1/models`, `GET /health`.

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a message
that names the problem: 400 bad input or dimensions, 413 too many items / tokens / bytes, 422
a malformed body, 503 the queue is full (retry later).
"""

from __future__ import annotations

import asyncio
import base64
import queue
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..runtime import Embedder
from .batcher import Batcher, Job
from .schemas import EmbeddingData, EmbeddingRequest, EmbeddingResponse, ErrorResponse, Usage


@dataclass
class ServerConfig:
    model_name: str | None = None  # default: the artifact folder's name
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_items: int = 2048
    max_request_tokens: int = 1_000_000
    max_body_bytes: int = 64 << 20


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, param: str | None = None, **headers: str) -> JSONResponse:
    kind = {503: "server_busy", 413: "request_too_large"}.get(status, "invalid_request_error")
    if status >= 500 and status != 503:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _texts(value: str | list[Any], max_items: int) -> list[str]:
    if isinstance(value, str):
        if not value:
            raise ApiError(400, "input is an empty string", "input")
        value = [value]
    elif not value:
        raise ApiError(400, "input is empty: send a string or a non-empty list of strings", "input")
    if len(value) > max_items:
        raise ApiError(
            413, f"input has {len(value)} items; at most {max_items} per request", "input"
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ApiError(
                400,
                f"input[{i}] is {type(item).__name__}, not a string "
                "(only strings are accepted, not token ids)",
                "input",
            )
        if not item:
            raise ApiError(400, f"input[{i}] is an empty string", "input")
    return value


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    return 422, "; ".join(parts)


def create_app(embedder: Embedder, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    name = cfg.model_name or embedder.path.resolve().name
    batcher = Batcher(
        embedder,
        max_wait_s=cfg.max_wait_ms / 1000,
        max_queue=cfg.max_queue,
        max_batch_tokens=embedder.max_batch_tokens,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="qexport embeddings", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.embedder = embedder

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _error(status, message)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            return _error(413, f"request body has {length} bytes; at most {cfg.max_body_bytes}")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": name,
            "dim": embedder.dim,
            "allowed_dims": embedder.manifest.allowed_dims,
            "max_length": embedder.encoder.max_length,
            "providers": embedder.providers,
            "queue": batcher.queue.qsize(),
            "max_queue": cfg.max_queue,
            "requests": batcher.requests,
            "batches": batcher.batches,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "qexport"}],
        }

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        responses={code: {"model": ErrorResponse} for code in (400, 413, 422, 503)},
    )
    async def embeddings(req: EmbeddingRequest) -> Response:
        texts = _texts(req.input, cfg.max_items)
        dim = req.dimensions
        if dim is not None and dim not in embedder.manifest.allowed_dims:
            raise ApiError(
                400,
                f"dimensions {dim} is not allowed for this model; allowed: "
                f"{embedder.manifest.allowed_dims}",
                "dimensions",
            )
        ids, type_ids, _, _ = await run_in_threadpool(embedder.tokenize, texts)
        loop = asyncio.get_running_loop()
        job = Job(ids, type_ids, dim, loop.create_future(), loop)
        if job.tokens > cfg.max_request_tokens:
            raise ApiError(
                413,
                f"input has {job.tokens} tokens; at most {cfg.max_request_tokens} per request",
                "input",
            )
        try:
            batcher.submit(job)
        except queue.Full:
            return _error(
                503,
                f"server busy: {cfg.max_queue} requests already waiting; retry later",
                **{"Retry-After": "1"},
            )
        try:
            vectors: np.ndarray = await job.future
        except FloatingPointError as exc:
            return _error(500, str(exc))
        if req.encoding_format == "base64":
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
            usage=Usage.model_construct(prompt_tokens=job.tokens, total_tokens=job.tokens),
        )
        return Response(resp.model_dump_json(), media_type="application/json")

    return app
