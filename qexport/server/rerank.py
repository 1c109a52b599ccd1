"""`POST /v1/rerank` and `POST /v2/rerank` for rerank artifacts (task "rerank"; the request
and response shapes of Cohere v1 and v2, Jina and vLLM):

request  {"model"?, "query", "documents": [str | {"text": str}], "top_n"?,
         "return_documents"?, "max_tokens_per_doc"?, "instruction"?}
response {"id", "model", "results": [{"index", "relevance_score", "document"?: {"text"}}]
         best first, "usage": {"total_tokens"}}

`max_tokens_per_doc` (Cohere v2) is honoured, not refused: each document is cut after its
first N tokens of the reranker's tokenizer, at the character where the N-th token ends, as
Cohere truncates long documents; a document that still does not fit beside the query in
max_length is cut further as always. `model` picks the reranker (`server/models.py`).

Each (query, document) pair is one token row in the shared batcher, so pairs from several
requests share forward passes, a long request runs in fair token-budget slices, and deadline
and disconnect are checked before each pass. Errors are OpenAI-shaped: 400 bad input, 401,
404 a model not served, 413 too many documents / tokens / bytes (tokens counted before the
whole request is tokenised), 422 malformed body, 500 NaN/Inf from the model, 503 busy or
batcher down, 504 past the request's deadline. TEI's `/rerank` (`server/tei.py`) runs through
the same `logits`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.reranker import Reranker
from ..runtime.tokenize import Encoded, encode_bounded
from ..tasks import RERANK, ranked
from .body import read_request
from .config import ServerConfig
from .models import Registry
from .service import Service
from .tokens import bad_input, check_items, request_limits


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # query and documents are checked by hand so that the 400 names the bad item
    query: Any = Field(description="the query")
    documents: list[Any] = Field(description='documents to rank: strings or {"text": ...}')
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1, description="return the best N only")
    return_documents: bool = False
    instruction: str | None = Field(default=None, description="task; default: the card's")
    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Cohere v2: each document cut to its first N tokens"
    )


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


def _text(d: Any, where: str) -> str:
    """A document: a string, or an object with a string `text` (Cohere, Jina)."""
    if isinstance(d, dict):
        if not isinstance(d.get("text"), str):
            raise bad_input(f'{where} is an object without a string "text"', "documents")
        d = d["text"]
    if not isinstance(d, str):
        raise bad_input(
            f'{where} is {type(d).__name__}, not a string or {{"text": string}}', "documents"
        )
    return d


def check_query(query: Any, documents: list[Any], max_items: int) -> tuple[str, list[str]]:
    """The query and the documents' texts, or ApiError 400/413 naming the bad item."""
    if not isinstance(query, str):
        raise bad_input(f"query is {type(query).__name__}, not a string", "query")
    if not query:
        raise bad_input("query is an empty string", "query")
    return query, check_items(documents, "documents", max_items, _text)


def cut_documents(rr: Reranker, docs: list[str], max_tokens: int) -> list[str]:
    """Each document cut after its first `max_tokens` tokens (of the reranker's tokenizer, no
    special tokens), at the character where that token ends: Cohere's `max_tokens_per_doc`.
    Memory is bounded by `max_tokens` (`encode_bounded`), not by the document."""
    encs = encode_bounded(rr.encoder.tokenizer, docs, max_tokens, special=False, offsets=True)
    return [
        d if len(e.ids) <= max_tokens else d[: e.offsets[max_tokens - 1][1]]
        for d, e in zip(docs, encs, strict=True)
    ]


def _encode(rr: Reranker, cfg: ServerConfig, query: str, docs: list[str], req: Any) -> Encoded:
    instruction = getattr(req, "instruction", None)
    if instruction is not None and not instruction:
        raise bad_input("instruction is an empty string", "instruction")
    with request_limits("documents"):
        if getattr(req, "max_tokens_per_doc", None) is not None:
            docs = cut_documents(rr, docs, req.max_tokens_per_doc)
        return rr.encoder.pairs(query, docs, instruction, max_tokens=cfg.max_request_tokens)


async def logits(
    request: Request,
    svc: Service,
    query: str,
    docs: list[str],
    req: Any,
    deadline: float,
    on_truncated: Callable[[int], None] | None = None,
) -> tuple[Any, int] | None:
    """(each pair's logit in input order, tokens), or None when the client left; the one path
    for every rerank route (Cohere, Jina, TEI). `on_truncated(n)` is called before the model
    runs when n documents had to be cut to fit max_length (TEI refuses that on request)."""
    rr = svc.model
    assert isinstance(rr, Reranker)
    enc = await run_in_threadpool(_encode, rr, svc.cfg, query, docs, req)
    if enc.truncated and on_truncated is not None:
        on_truncated(enc.truncated)
    return await svc.run(request, enc.ids, None, deadline)


def _response(name: str, req: RerankRequest, docs: list[str], out: Any, tokens: int) -> Response:
    results = [
        RerankResult.model_construct(
            index=i,
            relevance_score=s,
            document=RerankDocument.model_construct(text=docs[i]) if req.return_documents else None,
        )
        for i, s in ranked(RERANK.postprocess(out), req.top_n)
    ]
    resp = RerankResponse.model_construct(
        id=uuid.uuid4().hex,
        model=name,
        results=results,
        usage=RerankUsage.model_construct(total_tokens=tokens),
    )
    return Response(resp.model_dump_json(exclude_none=True), media_type="application/json")


def handler(registry: Registry, cfg: ServerConfig) -> Callable[[Request], Awaitable[Response]]:
    async def rerank(request: Request) -> Response:
        deadline = time.monotonic() + cfg.request_timeout_s
        req = await read_request(request, cfg, RerankRequest)
        svc = registry.resolve(RERANK, req.model)
        query, docs = check_query(req.query, req.documents, cfg.max_items)
        got = await logits(request, svc, query, docs, req, deadline)
        if got is None:
            return Response(status_code=499)
        return _response(svc.name, req, docs, got[0], got[1])

    return rerank
