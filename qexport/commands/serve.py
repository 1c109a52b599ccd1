"""`qexport serve ARTIFACT`: an OpenAI-compatible embeddings server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import importlib.util

from .errors import UsageError

SERVE_HINT = 'qexport serve needs FastAPI and uvicorn: pip install "qexport[serve]"'


def add(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="serve POST /v1/embeddings (OpenAI-compatible), or POST /v1/rerank for a "
        "reranker artifact, and GET /health",
    )
    s.add_argument("artifact", help="artifact folder")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--model-name", default=None, help="name in responses (default: folder name)")
    s.add_argument(
        "--max-batch-tokens", type=int, default=16384, help="padded tokens per forward pass"
    )
    s.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the batcher waits for more requests (default 5 ms)",
    )
    s.add_argument(
        "--max-queue", type=int, default=256, help="requests waiting before 503 (default 256)"
    )
    s.add_argument("--max-items", type=int, default=2048, help="inputs per request at most")
    s.add_argument(
        "--max-request-tokens", type=int, default=1_000_000, help="tokens per request at most"
    )


def run(args: argparse.Namespace) -> int:
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
        raise UsageError(SERVE_HINT)
    for name in ("max_batch_tokens", "max_queue", "max_items", "max_request_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_wait_ms < 0:
        raise UsageError("--max-wait-ms must be >= 0")
    import uvicorn

    from ..manifest import load_manifest
    from ..runtime import Embedder
    from ..server.app import ServerConfig, create_app

    config = ServerConfig(
        model_name=args.model_name,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_items=args.max_items,
        max_request_tokens=args.max_request_tokens,
    )
    if load_manifest(args.artifact).task == "rerank":  # POST /v1/rerank (server/rerank.py)
        from ..runtime import Reranker
        from ..server.rerank import create_rerank_app

        reranker = Reranker(
            args.artifact, device=args.device, max_batch_tokens=args.max_batch_tokens
        )
        app = create_rerank_app(reranker, config)
    else:
        embedder = Embedder(
            args.artifact, device=args.device, max_batch_tokens=args.max_batch_tokens
        )
        app = create_app(embedder, config)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0
