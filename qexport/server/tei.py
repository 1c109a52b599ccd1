"""Text Embeddings Inference's HTTP API beside the OpenAI one: `POST /embed`, `POST /rerank`,
`POST /` (by the served model's kind), `GET /info`, `POST /tokenize`; shapes from TEI's
router (router/src/http/types.rs, server.rs). Same auth, limits, batcher and metrics as the
OpenAI routes; errors in TEI's body `{"error": str, "error_type": str}` with TEI's codes:
400 Empty, 413 body too large, 422 Validation (bad fields, too many inputs or tokens, an
option that cannot be honoured), 424 Backend (NaN/Inf), 429 Overloaded (queue full),
503 Unhealthy (batcher down), 504 past the deadline; 401 from the shared auth.

Options honoured exactly or refused, never a silently different vector:
- `normalize: true` (TEI's default) L2-normalises; `normalize: false` on an artifact that
  normalises inside its graph is 422 (the raw vector is not in the graph's output);
- `truncate` (default: TEI's `auto_truncate`, true here) and `truncation_direction`: an input
  longer than max_length is cut on the right; with `truncate: false`, or with `Left`, such an
  input is 422 (TEI's "must have less than N tokens"; qexport cuts only on the right);
- `prompt_name` prepends the artifact's sentence-transformers prompt (422 if unknown);
- `dimensions` keeps the first N values (Matryoshka) and renormalises, N from allowed_dims;
- `raw_scores` (rerank) answers the logit, otherwise the sigmoid, as TEI.
A `model` field (not TEI's) picks a model when several of the kind are served.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import __version__
from ..runtime import Embedder, Reranker
from ..tasks import EMBED, RERANK
from ..util import renormalise
from . import rerank as rr_route
from .body import parse_request, read_body
from .config import ServerConfig
from .embed import Embeddings
from .errors import ApiError
from .models import Registry
from .service import Service

Direction = Literal["Left", "Right", "left", "right"]
Handler = Callable[[Request], Awaitable[Response]]

# an ApiError's status -> TEI's (status, error_type)
TEI_ERRORS: dict[int, tuple[int, str]] = {
    400: (422, "Validation"),
    404: (422, "Validation"),
    408: (408, "Validation"),
    413: (422, "Validation"),
    422: (422, "Validation"),
    500: (424, "Backend"),
    503: (503, "Unhealthy"),
    504: (504, "Backend"),
}


class TeiError(Exception):
    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type


def _validation(message: str) -> TeiError:
    return TeiError(422, message, "Validation")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Any
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None
    normalize: bool = True
    dimensions: int | None = None
    model: str | None = None  # qexport: which embedder, when several are served


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: Any
    texts: list[Any]
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    return_text: bool = False
    model: str | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    inputs: Any
    add_special_tokens: bool = True
    prompt_name: str | None = None
    model: str | None = None


class _AnyBody(BaseModel):
    model_config = ConfigDict(extra="allow")


def tei_response(exc: ApiError | TeiError, registry: Registry) -> JSONResponse:
    if isinstance(exc, TeiError):
        registry.metrics.refuse("bad_input")
        return JSONResponse({"error": exc.message, "error_type": exc.error_type}, exc.status)
    if exc.reason is not None:
        registry.metrics.refuse(exc.reason)
    status, kind = TEI_ERRORS.get(exc.status, (exc.status, "Validation"))
    if exc.reason == "queue_full":
        status, kind = 429, "Overloaded"
    if exc.reason == "body_too_large":
        status = 413
    if exc.reason == "bad_body" and exc.status == 400:  # not JSON at all: axum's 400
        status = 400
    return JSONResponse({"error": exc.message, "error_type": kind}, status, headers=exc.headers)


def _texts(inputs: Any, max_items: int) -> list[str]:
    items = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(items, list):
        raise _validation("`inputs` must be a string or a list of strings")
    if not items:
        raise TeiError(400, "`inputs` cannot be empty", "Empty")
    if len(items) > max_items:
        raise _validation(f"batch size {len(items)} > maximum allowed batch size {max_items}")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise _validation(f"inputs[{i}] is {type(t).__name__}: only strings are accepted")
        if not t:
            raise TeiError(400, f"inputs[{i}] is empty", "Empty")
    return list(items)


def _prompted(emb: Any, texts: list[str], prompt_name: str | None) -> list[str]:
    if prompt_name is None:
        return texts
    prompts = emb.manifest.prompts if isinstance(emb, Embedder) else {}
    if prompt_name not in prompts:
        raise _validation(
            f"`prompt_name` {prompt_name!r} is not among this model's prompts: {sorted(prompts)}"
        )
    return [prompts[prompt_name] + t for t in texts]


def _refuse_truncated(emb: Embedder, texts: list[str], rows: list[list[int]], left: bool) -> None:
    """422 for the first input longer than max_length (only rows at max_length can be)."""
    limit = emb.encoder.max_length
    for i, row in enumerate(rows):
        if len(row) < limit:
            continue
        enc = emb.encoder.encode([texts[i]], warn=False)
        if enc.truncated:
            given = f"{'at least ' if enc.clipped else ''}{limit + enc.dropped}"
            why = (
                "; truncation_direction Left is not supported (qexport cuts on the right)"
                if left
                else ""
            )
            raise _validation(
                f"`inputs` must have less than {limit} tokens. Given: {given} (inputs[{i}]){why}"
            )


class Tei:
    """TEI's routes over a registry."""

    def __init__(self, registry: Registry, cfg: ServerConfig) -> None:
        self.registry, self.cfg = registry, cfg
        self.embeddings = Embeddings(registry)

    def _resolve(self, task: Any, model: str | None) -> Service:
        if model is None and not self.registry.of_task(task):  # TEI: the served kind decides
            what = "re-ranker" if task is RERANK else "embedding"
            raise TeiError(424, f"model is not a{'n' * (task is EMBED)} {what} model", "Backend")
        return self.registry.resolve(task, model)

    def _pick(self, model: str | None) -> Service:
        """Any served model by name; without one, the only model, else the only embedder."""
        services = list(self.registry)
        if model is None and len(services) == 1:
            return services[0]
        if model is not None and model in self.registry.services:
            return self.registry.services[model]
        return self.registry.resolve(EMBED, model)

    async def embed(self, request: Request, req: EmbedRequest, deadline: float) -> Response:
        svc = self._resolve(EMBED, req.model)
        emb = svc.model
        assert isinstance(emb, Embedder)
        texts = _prompted(emb, _texts(req.inputs, self.cfg.max_items), req.prompt_name)
        if not req.normalize and emb.manifest.normalize:
            raise _validation(
                "normalize: false cannot be honoured: this artifact normalises inside its "
                "graph (export it without normalisation to get raw vectors)"
            )
        self.embeddings.check_dimensions(emb, req.dimensions)
        rows = await self.embeddings.tokenize(svc, texts)
        left = req.truncation_direction.lower() == "left"
        if req.truncate is False or left:
            await run_in_threadpool(_refuse_truncated, emb, texts, rows[0], left)
        got = await self.embeddings.vectors(request, svc, rows, req.dimensions, deadline)
        if got is None:
            return Response(status_code=499)
        vectors = got[0]
        if req.normalize and not emb.manifest.normalize:
            vectors = renormalise(vectors)
        return Response(_json_rows(vectors), media_type="application/json")

    async def rerank(self, request: Request, req: RerankRequest, deadline: float) -> Response:
        svc = self._resolve(RERANK, req.model)
        query, docs = rr_route.check_query(req.query, req.texts, self.cfg.max_items)
        left = req.truncation_direction.lower() == "left"
        limit = svc.model.encoder.max_length

        def refuse(n: int) -> None:
            if req.truncate is False or left:
                raise _validation(
                    f"{n} of the texts do not fit beside the query in {limit} tokens"
                    + ("; truncation_direction Left is not supported" if left else "")
                )

        got = await rr_route.logits(request, svc, query, docs, None, deadline, refuse)
        if got is None:
            return Response(status_code=499)
        logits = got[0]
        scores = np.asarray(logits, dtype=np.float32) if req.raw_scores else None
        if scores is None:
            scores = RERANK.postprocess(logits)
        order = np.argsort(-scores, kind="stable")
        out = [
            {"index": int(i), **({"text": docs[i]} if req.return_text else {}),
             "score": float(scores[i])}
            for i in order
        ]  # fmt: skip
        return JSONResponse(out)

    def info(self, model: str | None) -> dict[str, Any]:
        svc = self._pick(model) if model is not None else next(iter(self.registry))
        m = svc.model
        if isinstance(m, Reranker):
            kind: dict[str, Any] = {
                "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
            }
        else:
            kind = {"embedding": {"pooling": m.manifest.pooling}}
        dtypes = {"fp32": "float32", "fp16": "float16"}
        return {
            "model_id": svc.name,
            "model_sha": None,
            "model_dtype": dtypes.get(m.manifest.precision, m.manifest.precision),
            "served_model_name": svc.name,
            "model_type": kind,
            "max_concurrent_requests": self.cfg.max_queue,
            "max_input_length": m.encoder.max_length,
            "max_batch_tokens": m.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": self.cfg.max_items,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": __version__,
            "sha": None,
            "docker_label": None,
        }

    def tokenize(self, req: TokenizeRequest) -> list[list[dict[str, Any]]]:
        svc = self._pick(req.model)
        texts = _prompted(svc.model, _texts(req.inputs, self.cfg.max_items), req.prompt_name)
        tok = svc.model.encoder.tokenizer
        out = []
        for text in texts:
            enc = tok.encode(text, add_special_tokens=req.add_special_tokens)
            out.append(_tokens(text, enc))
        return out


def _tokens(text: str, enc: Any) -> list[dict[str, Any]]:
    """TEI's SimpleToken list: byte offsets into the UTF-8 input, none for special tokens."""
    data = text.encode("utf-8")
    to_byte = (
        np.cumsum([0] + [len(c.encode("utf-8")) for c in text]) if not text.isascii() else None
    )
    out = []
    for tid, token, (a, b), special in zip(
        enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask, strict=True
    ):
        if special:
            out.append({"id": tid, "text": token, "special": True, "start": None, "stop": None})
            continue
        if to_byte is not None:
            a, b = int(to_byte[a]), int(to_byte[b])
        piece = data[a:b].decode("utf-8", errors="replace")
        out.append({"id": tid, "text": piece, "special": False, "start": a, "stop": b})
    return out


def _json_rows(vectors: np.ndarray) -> bytes:
    import json

    return json.dumps(vectors.tolist()).encode()


def _parse(body: bytes, cfg: ServerConfig, model: type[BaseModel]) -> Any:
    return parse_request(body, cfg.max_items, model)


def handlers(registry: Registry, cfg: ServerConfig) -> tuple[dict[str, Handler], Tei]:
    """POST /embed, /rerank, /tokenize and / (by the model's kind or the body's fields)."""
    tei = Tei(registry, cfg)

    def guarded(fn: Callable[[Request, bytes, float], Awaitable[Response]]) -> Handler:
        async def route(request: Request) -> Response:
            deadline = time.monotonic() + cfg.request_timeout_s
            try:
                body = await read_body(request, cfg)
                return await fn(request, body, deadline)
            except (ApiError, TeiError) as exc:
                return tei_response(exc, registry)

        route.__name__ = fn.__name__
        return route

    async def embed(request: Request, body: bytes, deadline: float) -> Response:
        return await tei.embed(request, _parse(body, cfg, EmbedRequest), deadline)

    async def rerank(request: Request, body: bytes, deadline: float) -> Response:
        return await tei.rerank(request, _parse(body, cfg, RerankRequest), deadline)

    async def tokenize(request: Request, body: bytes, deadline: float) -> Response:
        return JSONResponse(tei.tokenize(_parse(body, cfg, TokenizeRequest)))

    async def predict(request: Request, body: bytes, deadline: float) -> Response:
        data = _parse(body, cfg, _AnyBody).model_dump()
        kinds = {s.task.name for s in registry}
        as_rerank = "texts" in data if len(kinds) > 1 else RERANK.name in kinds
        kind = RerankRequest if as_rerank else EmbedRequest
        try:
            req = kind.model_validate(data)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e.get("loc", ())) or "body"
            raise ApiError(422, f"{where}: {e.get('msg')}", reason="bad_body") from None
        if isinstance(req, RerankRequest):
            return await tei.rerank(request, req, deadline)
        return await tei.embed(request, req, deadline)

    routes = {
        "/embed": guarded(embed),
        "/rerank": guarded(rerank),
        "/tokenize": guarded(tokenize),
        "/": guarded(predict),
    }
    return routes, tei
