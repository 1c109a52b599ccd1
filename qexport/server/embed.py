"""`POST /v1/embeddings` (the OpenAI embeddings API) for embedding artifacts (task "embed").

The texts are checked (400 naming the bad item, 413 too many), tokenised within the token
limit (`tokens.request_limits`, 413), run through the service's batcher, and the job's
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
from ..tasks import EMBED
from .body import read_request
from .config import ServerConfig
from .errors import ApiError
from .models import Registry
from .schemas import EmbeddingData, EmbeddingRequest, EmbeddingResponse, Usage
from .service import Service
from .tokens import check_texts, request_limits


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


class Embeddings:
    """The embedding services of a registry; `vectors` is the
    one path from texts to post-processed vectors (OpenAI's route and TEI's `/embed`)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @staticmethod
    def check_dimensions(emb: Embedder, dimensions: int | None) -> None:
        if dimensions is not None and dimensions not in emb.manifest.allowed_dims:
            raise ApiError(
                400,
                f"dimensions {dimensions} is not allowed for this model; allowed: "
                f"{emb.manifest.allowed_dims}",
                "dimensions",
                reason="bad_input",
            )

    @staticmethod
    def _tokenize(svc: Service, texts: list[str]) -> tuple[Any, Any]:
        with request_limits("input"):
            limit = svc.cfg.max_request_tokens
            enc = svc.model.encoder.encode(texts, warn=False, max_tokens=limit, name="input")
        return enc.ids, enc.type_ids

    async def tokenize(self, svc: Service, texts: list[str]) -> tuple[Any, Any]:
        return await run_in_threadpool(self._tokenize, svc, texts)

    async def vectors(
        self,
        request: Request,
        svc: Service,
        rows: tuple[Any, Any],
        dimensions: int | None,
        deadline: float,
    ) -> tuple[np.ndarray, int] | None:
        emb = svc.model
        assert isinstance(emb, Embedder)
        complete = functools.partial(emb.truncate_dim, dim=dimensions)
        return await svc.run(request, rows[0], rows[1], deadline, complete)


def handler(registry: Registry, cfg: ServerConfig) -> Callable[[Request], Awaitable[Response]]:
    route = Embeddings(registry)

    async def embeddings(request: Request) -> Response:
        deadline = time.monotonic() + cfg.request_timeout_s
        req = await read_request(request, cfg, EmbeddingRequest)
        svc = registry.resolve(EMBED, req.model)
        texts = check_texts(req.input, cfg.max_items)
        assert isinstance(svc.model, Embedder)
        route.check_dimensions(svc.model, req.dimensions)
        rows = await route.tokenize(svc, texts)
        got = await route.vectors(request, svc, rows, req.dimensions, deadline)
        if got is None:
            return Response(status_code=499)
        vectors, tokens = got
        return _encode(vectors, req.encoding_format, svc.name, tokens)

    return embeddings
