"""`POST /v1/rerank` for rerank artifacts (task "rerank"; the request/response shape of
Cohere, Jina and vLLM):

request  {"model", "query", "documents": [str], "top_n"?, "return_documents"?, "instruction"?}
response {"model", "results": [{"index", "relevance_score", "document"?: {"text"}}] best
         first, "usage": {"total_tokens"}}

A rerank artifact is served by the same app and service as an embedding one (`app.create_app`
picks the route from the model's task; /v1/embeddings answers 404 here and /v1/rerank 404
there): each (query, document) pair is one token row in the shared batcher, so pairs from
several requests share forward passes, a long request runs in fair token-budget slices, and
deadline and disconnect are checked before each pass. Errors are OpenAI-shaped: 400 bad input,
401, 413 too many documents / tokens / bytes (tokens counted before the whole request is
tokenised), 422 malformed body, 500 NaN/Inf from the model, 503 busy or batcher down, 504 past
the request's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.reranker import Reranker, TokenLimitError, ranked
from ..tasks import RERANK
from .body import read_request
from .config import ServerConfig
from .errors import ApiError
from .service import Service


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


def details(reranker: Reranker) -> dict[str, Any]:
    """The rerank lines of /health (none beyond the shared ones)."""
    return {}


async def _tokenize(rr: Reranker, cfg: ServerConfig, req: RerankRequest) -> list[list[int]]:
    query, docs = _strings(req, cfg.max_items)
    try:
        rows, _ = await run_in_threadpool(
            rr.encoder.encode, query, docs, req.instruction, max_tokens=cfg.max_request_tokens
        )
    except TokenLimitError as exc:
        raise ApiError(413, str(exc), "documents", reason="too_many_tokens") from None
    except ValueError as exc:  # e.g. a lone surrogate, named by its index
        raise _bad(str(exc), "documents") from None
    return rows


def _response(name: str, req: RerankRequest, logits: Any, tokens: int) -> Response:
    docs = req.documents
    results = [
        RerankResult.model_construct(
            index=i,
            relevance_score=s,
            document=RerankDocument.model_construct(text=docs[i]) if req.return_documents else None,
        )
        for i, s in ranked(RERANK.postprocess(logits), req.top_n)
    ]
    resp = RerankResponse.model_construct(
        model=name, results=results, usage=RerankUsage.model_construct(total_tokens=tokens)
    )
    return Response(resp.model_dump_json(exclude_none=True), media_type="application/json")


def handler(svc: Service) -> Callable[[Request], Awaitable[Response]]:
    rr = svc.model
    assert isinstance(rr, Reranker)
    cfg = svc.cfg

    async def rerank(request: Request) -> Response:
        deadline = time.monotonic() + cfg.request_timeout_s
        req = await read_request(request, cfg, RerankRequest)
        rows = await _tokenize(rr, cfg, req)
        got = await svc.run(request, rows, None, deadline)  # the rows' logits, input order
        if got is None:
            return Response(status_code=499)
        logits, tokens = got
        return _response(svc.name, req, logits, tokens)

    return rerank
