"""`POST /v1/rerank` for rerank artifacts (the request/response shape of Cohere, Jina and vLLM):

request  {"model", "query", "documents": [str], "top_n"?, "return_documents"?, "instruction"?}
response {"model", "results": [{"index", "relevance_score", "document"?: {"text"}}] best
         first, "usage": {"total_tokens"}}

A rerank artifact gets this app instead of the embeddings app (/v1/embeddings answers 404
here and /v1/rerank 404 there), built on the same base (app.base_app): auth, /metrics,
/health, /v1/models, the body counted while it is read (413 past the limit, chunked too, 408
when it does not arrive in time), and OpenAI-shaped errors: 400 bad input, 401, 413 too many
documents / tokens / bytes (tokens counted before the whole request is tokenised), 422
malformed body, 503 busy, 504 past the request's deadline; a request whose client left is
dropped before its forward pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.reranker import Reranker, TokenLimitError, ranked, sigmoid
from .app import SCAN_ABOVE, base_app, parse_request, post_route, read_body
from .config import ServerConfig
from .errors import ApiError, error_response
from .metrics import Metrics


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


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, param, reason="bad_input")


def _strings(req: RerankRequest, max_items: int) -> tuple[str, list[str]]:
    if not isinstance(req.query, str):
        raise _bad(f"query is {type(req.query).__name__}, not a string", "query")
    if not req.query:
        raise _bad("query is an empty string", "query")
    if not req.documents:
        raise _bad("documents is empty: send a non-empty list of strings", "documents")
    if len(req.documents) > max_items:
        raise ApiError(
            413,
            f"documents has {len(req.documents)} items; at most {max_items} per request",
            "documents",
            reason="too_many_items",
        )
    for i, d in enumerate(req.documents):
        if not isinstance(d, str):
            raise _bad(f"documents[{i}] is {type(d).__name__}, not a string", "documents")
        if not d:
            raise _bad(f"documents[{i}] is an empty string", "documents")
    if req.instruction is not None and not req.instruction:
        raise _bad("instruction is an empty string", "instruction")
    return req.query, list(req.documents)


class RerankService:
    """What `POST /v1/rerank` does: one forward pass at a time (onnxruntime uses every core)."""

    def __init__(self, reranker: Reranker, cfg: ServerConfig, metrics: Metrics) -> None:
        self.reranker, self.cfg, self.metrics = reranker, cfg, metrics
        self.name = cfg.model_name or reranker.path.resolve().name
        self.waiting = 0
        self.requests = 0
        self.running = asyncio.Semaphore(1)
        metrics.bind(lambda: float(self.waiting), lambda: 1.0)

    def health(self) -> JSONResponse:
        r = self.reranker
        return JSONResponse(
            {
                "status": "ok",
                "model": self.name,
                "task": "rerank",
                "max_length": r.encoder.max_length,
                "providers": r.providers,
                "waiting": self.waiting,
                "max_queue": self.cfg.max_queue,
                "requests": self.requests,
            }
        )

    async def _tokenize(self, req: RerankRequest) -> list[list[int]]:
        query, docs = _strings(req, self.cfg.max_items)
        try:
            rows, _ = await run_in_threadpool(
                self.reranker.encoder.encode,
                query,
                docs,
                req.instruction,
                max_tokens=self.cfg.max_request_tokens,
            )
        except TokenLimitError as exc:
            raise ApiError(413, str(exc), "documents", reason="too_many_tokens") from None
        except ValueError as exc:  # e.g. a lone surrogate, named by its index
            raise _bad(str(exc), "documents") from None
        return rows

    async def _logits(self, request: Request, rows: list[list[int]], deadline: float) -> Any:
        if self.waiting >= self.cfg.max_queue:
            raise ApiError(
                503,
                f"server busy: {self.cfg.max_queue} requests already waiting; retry later",
                reason="queue_full",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            async with self.running:
                if await request.is_disconnected():
                    self.metrics.refuse("client_disconnected")
                    return None
                if time.monotonic() > deadline:
                    raise ApiError(
                        504,
                        f"request not answered within {self.cfg.request_timeout_s:g} s; "
                        "retry later",
                        reason="deadline",
                    )
                logits = await run_in_threadpool(self.reranker.logits_for_ids, rows)
        finally:
            self.waiting -= 1
        self.metrics.on_batch(len(rows), sum(len(r) for r in rows))
        return logits

    async def rerank(self, request: Request) -> Response:
        deadline = time.monotonic() + self.cfg.request_timeout_s
        body = await read_body(request, self.cfg)
        if len(body) > SCAN_ABOVE:
            req = await run_in_threadpool(parse_request, body, self.cfg.max_items, RerankRequest)
        else:
            req = parse_request(body, self.cfg.max_items, RerankRequest)
        rows = await self._tokenize(req)
        try:
            logits = await self._logits(request, rows, deadline)
        except FloatingPointError as exc:  # NaN/Inf from the model: never a silent score
            return error_response(500, str(exc))
        if logits is None:
            return Response(status_code=499)
        self.requests += 1
        docs = req.documents
        results = [
            RerankResult.model_construct(
                index=i,
                relevance_score=s,
                document=RerankDocument.model_construct(text=docs[i])
                if req.return_documents
                else None,
            )
            for i, s in ranked(sigmoid(logits), req.top_n)
        ]
        tokens = sum(len(r) for r in rows)
        resp = RerankResponse.model_construct(
            model=self.name, results=results, usage=RerankUsage.model_construct(total_tokens=tokens)
        )
        return Response(resp.model_dump_json(exclude_none=True), media_type="application/json")


def create_rerank_app(reranker: Reranker, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    cfg.check()
    metrics = Metrics()
    svc = RerankService(reranker, cfg, metrics)
    app = base_app("qexport reranker", cfg, metrics, svc.health, svc.name)
    app.state.reranker = reranker

    post_route(app, "/v1/rerank", RerankRequest, RerankResponse, svc.rerank)

    return app
