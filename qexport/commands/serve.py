"""`qexport serve ARTIFACT [ARTIFACT ...]`: an OpenAI-compatible embeddings server, a rerank
server for a reranker artifact, or both in one process (FastAPI + uvicorn; one app built from
the artifacts' tasks, each served under its folder name or `--name`, routed by `model`)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from typing import Any

from ..server.config import KEY_ENV
from ..util import install_hint
from .errors import UsageError
from .options import from_args

SERVE_HINT = install_hint("qexport serve (FastAPI, uvicorn)", "serve")

# the numeric limits: flag, type, default, help
LIMITS: tuple[tuple[str, type, float | None, str], ...] = (
    (
        "--max-batch-tokens",
        int,
        None,
        "padded tokens per forward pass (default 4096 on CPU, 16384 on CUDA)",
    ),
    ("--max-wait-ms", float, 5.0, "how long the batcher waits for more requests (default 5 ms)"),
    ("--max-queue", int, 256, "requests in flight before 503 (default 256)"),
    ("--max-items", int, 2048, "inputs per request at most"),
    ("--max-request-tokens", int, 300_000, "tokens per request at most (default 300000)"),
    ("--max-body-bytes", int, 4 << 20, "request body bytes (default 4 MiB)"),
    ("--request-timeout-s", float, 300.0, "answer within this many seconds or 504 (default 300)"),
    (
        "--read-timeout-s",
        float,
        30.0,
        "request head and body must arrive within this many seconds (default 30)",
    ),
    ("--max-connections", int, 1024, "open connections at most (default 1024)"),
)


def add(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="serve POST /v1/embeddings (OpenAI-compatible), or POST /v1/rerank for a "
        "reranker artifact, GET /health and GET /metrics",
    )
    s.add_argument(
        "artifacts", nargs="+", metavar="ARTIFACT", help="artifact folder(s), served together"
    )
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument(
        "--name",
        "--model-name",
        dest="names",
        action="append",
        default=None,
        help="served name of each artifact in order (repeatable; default: the folder's name)",
    )
    s.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every route but /health "
        f"(default: ${KEY_ENV}; none: no auth)",
    )
    s.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking the artifact's sha256 checksums at load",
    )
    s.add_argument(
        "--no-metrics",
        action="store_true",
        help="no GET /metrics route, no per-request metrics middleware",
    )
    for flag, kind, default, text in LIMITS:
        s.add_argument(flag, type=kind, default=default, help=text)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    for name in ("max_batch_tokens", "max_connections"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    names = args.names or []
    if len(names) > len(args.artifacts):
        raise UsageError(f"{len(names)} --name for {len(args.artifacts)} artifacts")
    if not all(n.strip() for n in names):
        raise UsageError("--name is empty")
    if not (math.isfinite(args.read_timeout_s) and 0 < args.read_timeout_s <= 86_400):
        raise UsageError(f"--read-timeout-s must be in (0, 86400], got {args.read_timeout_s}")


def _app(args: argparse.Namespace, config: Any) -> Any:
    """The app for the artifacts' tasks: POST /v1/embeddings for embedders, POST /v1/rerank
    for rerankers, TEI's routes for both."""
    from ..manifest import load_manifest
    from ..runtime import Embedder, Reranker
    from ..server.app import create_app

    kw = {"device": args.device, "max_batch_tokens": args.max_batch_tokens}
    names = list(args.names or [])
    named = []
    for i, artifact in enumerate(args.artifacts):
        try:
            runtime = Reranker if load_manifest(artifact).task == "rerank" else Embedder
            model = runtime(artifact, verify=not args.no_verify, **kw)
        except (TypeError, AttributeError) as exc:
            raise UsageError(f"{artifact}: malformed artifact or manifest ({exc})") from None
        named.append((names[i] if i < len(names) else None, model))
    try:
        return create_app(named, config)
    except ValueError as exc:  # two artifacts under one name
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if any(
        importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "prometheus_client")
    ):
        raise UsageError(SERVE_HINT)
    _check(args)
    from ..server.config import ServerConfig, api_key
    from ..server.run import bind, exposure_warning, serve

    try:
        key = api_key(args.api_key, os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = from_args(ServerConfig, args, api_key=key, metrics=not args.no_metrics)
    try:
        config.check()
    except ValueError as exc:  # name the option as the user typed it
        name = str(exc).split(" ", 1)[0]
        raise UsageError(f"--{name.replace('_', '-')} {str(exc).split(' ', 1)[1]}") from None
    sock = bind(args.host, args.port)  # before loading: a port in use fails fast
    try:
        app = _app(args, config)
        warning = exposure_warning(args.host, sock.getsockname()[0], config.api_key)
        if warning:
            print(warning, file=sys.stderr)
        serve(
            app,
            sock,
            header_timeout_s=args.read_timeout_s,
            max_connections=args.max_connections,
            log_level="warning" if args.quiet else "info",
        )
    finally:
        sock.close()
    return 0
