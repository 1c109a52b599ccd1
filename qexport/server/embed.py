"""`POST /v1/embeddings` (the OpenAI embeddings API) for embedding artifacts (task "embed").

The texts are checked (400 naming the bad item, 413 too many), tokenised within the token
limit (`tokens.BoundedTokenizer`, 413), run through the service's batcher, and the job's
completion is the task's post-processing (Matryoshka slice + renormalise to `dimensions`).
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ..runtime import Embedder
from .body import read_request
from .errors import ApiError
from .schemas import EmbeddingData, EmbeddingRequest, EmbeddingResponse, Usage
from .service import Service
from .tokens import BoundedTokenizer, check_texts


def details(emb: Embedder) -> dict[str, Any]:
    """The embedding lines of /health."""
    return {"dim": emb.dim, "allowed_dims": emb.manifest.allowed_dims}


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


def handler(svc: Service) -> Callable[[Request], Awaitable[Response]]:
    emb = svc.model
    assert isinstance(emb, Embedder)
    tokenizer = BoundedTokenizer(emb.encoder)
    cfg = svc.cfg

    async def embeddings(request: Request) -> Response:
        deadline = time.monotonic() + cfg.request_timeout_s
        req = await read_request(request, cfg, EmbeddingRequest)
        texts = check_texts(req.input, cfg.max_items)
        if req.dimensions is not None and req.dimensions not in emb.manifest.allowed_dims:
            raise ApiError(
                400,
                f"dimensions {req.dimensions} is not allowed for this model; allowed: "
                f"{emb.manifest.allowed_dims}",
                "dimensions",
                reason="bad_input",
            )
        ids, types = await run_in_threadpool(tokenizer.tokenize, texts, cfg.max_request_tokens)
        complete = functools.partial(emb.truncate_dim, dim=req.dimensions)
        got = await svc.run(request, ids, types, deadline, complete)
        if got is None:
            return Response(status_code=499)
        vectors, tokens = got
        return _encode(vectors, req.encoding_format, svc.name, tokens)

    return embeddings
