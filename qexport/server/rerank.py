"""`POST /v1/rerank` for rerank artifacts (the request/response shape of Cohere, Jina and vLLM):

request  {"model", "query", "documents": [str], "top_n"?, "return_documents"?, "instruction"?}
response {"model", "results": [{"index", "relevance_score", "document"?: {"text"}}] best
         first, "usage": {"total_tokens"}}

A rerank artifact gets this app (with /health and /v1/models) instead of the embeddings app,
so /v1/embeddings answers 404 here and /v1/rerank 404 there. Errors use the OpenAI shape of
app.py: 400 bad input, 413 too many documents / tokens / bytes, 422 malformed body, 503 busy.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.reranker import Reranker, ranked, sigmoid
from .app import ServerConfig
from .schemas import ErrorResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, param: str | None = None, **headers: str) -> JSONResponse:
    """OpenAI's error shape (kept here, not imported, so this module only needs the config)."""
    kind = {503: "server_busy", 413: "request_too_large"}.get(status, "invalid_request_error")
    if status >= 500 and status != 503:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    return 422, "; ".join(parts)


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # query and documents are checked by hand so that the 400 names the bad item
    query: Any = Field(description="the query")
    documents: list[Any] = Field(description="documents to rank, as strings")
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1, description="return the best N only")
    return_documents: bool = False
    instruction: str | None = Field(default=None, description="task; default: the card's")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: RerankUsage


def _strings(req: RerankRequest, max_items: int) -> tuple[str, list[str]]:
    if not isinstance(req.query, str):
        raise ApiError(400, f"query is {type(req.query).__name__}, not a string", "query")
    if not req.query:
        raise ApiError(400, "query is an empty string", "query")
    if not req.documents:
        raise ApiError(400, "documents is empty: send a non-empty list of strings", "documents")
    if len(req.documents) > max_items:
        raise ApiError(
            413,
            f"documents has {len(req.documents)} items; at most {max_items} per request",
            "documents",
        )
    for i, d in enumerate(req.documents):
        if not isinstance(d, str):
            raise ApiError(400, f"documents[{i}] is {type(d).__name__}, not a string", "documents")
        if not d:
            raise ApiError(400, f"documents[{i}] is an empty string", "documents")
    if req.instruction is not None and not req.instruction:
        raise ApiError(400, "instruction is an empty string", "instruction")
    return req.query, list(req.documents)


def create_rerank_app(reranker: Reranker, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    name = cfg.model_name or reranker.path.resolve().name
    state = {"waiting": 0, "requests": 0}
    running = asyncio.Semaphore(1)  # one forward pass at a time; onnxruntime uses every core

    app = FastAPI(title="qexport reranker")
    app.state.reranker = reranker

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
            "task": "rerank",
            "max_length": reranker.encoder.max_length,
            "providers": reranker.providers,
            "waiting": state["waiting"],
            "max_queue": cfg.max_queue,
            "requests": state["requests"],
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "qexport"}],
        }

    @app.post(
        "/v1/rerank",
        response_model=RerankResponse,
        responses={code: {"model": ErrorResponse} for code in (400, 413, 422, 503)},
    )
    async def rerank(req: RerankRequest) -> Response:
        query, docs = _strings(req, cfg.max_items)
        try:
            rows, _ = await run_in_threadpool(reranker.encoder.encode, query, docs, req.instruction)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        tokens = sum(len(r) for r in rows)
        if tokens > cfg.max_request_tokens:
            raise ApiError(
                413, f"request has {tokens} tokens; at most {cfg.max_request_tokens}", "documents"
            )
        if state["waiting"] >= cfg.max_queue:
            return _error(
                503,
                f"server busy: {cfg.max_queue} requests already waiting; retry later",
                **{"Retry-After": "1"},
            )
        state["waiting"] += 1
        try:
            async with running:
                logits = await run_in_threadpool(reranker.logits_for_ids, rows)
        except FloatingPointError as exc:
            return _error(500, str(exc))
        finally:
            state["waiting"] -= 1
        state["requests"] += 1
        scores = sigmoid(logits)
        results = [
            RerankResult.model_construct(
                index=i,
                relevance_score=s,
                document=RerankDocument.model_construct(text=docs[i])
                if req.return_documents
                else None,
            )
            for i, s in ranked(scores, req.top_n)
        ]
        resp = RerankResponse.model_construct(
            model=name, results=results, usage=RerankUsage.model_construct(total_tokens=tokens)
        )
        return Response(resp.model_dump_json(exclude_none=True), media_type="application/json")

    return app
