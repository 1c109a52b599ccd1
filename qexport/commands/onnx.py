"""`qexport onnx MODEL -o DIR`: export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..manifest import PRECISIONS
from .errors import UsageError


def add(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser("onnx", help="export MODEL to an ONNX artifact folder")
    o.add_argument(
        "model", help="hub id (Qwen/Qwen3-Embedding-4B), local checkpoint folder, or random:<name>"
    )
    o.add_argument("-o", "--output", required=True, help="artifact folder to create")
    o.add_argument(
        "--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)} (default fp32)"
    )
    o.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="longest input in tokens (default: the model's)",
    )
    o.add_argument(
        "--token-embeddings", action="store_true", help="also output token_embeddings [B, S, H]"
    )
    o.add_argument(
        "--tokenizer", default=None, help="tokenizer folder to use instead of the model's"
    )
    o.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    o.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..export.api import ExportOptions, export_onnx

    if args.precision not in PRECISIONS:
        raise UsageError(
            f"unknown precision {args.precision!r}; choose from {', '.join(PRECISIONS)}"
        )
    opts = ExportOptions(
        precision=args.precision,
        max_length=args.max_length,
        token_embeddings=args.token_embeddings,
        tokenizer=args.tokenizer,
        revision=args.revision,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    manifest = export_onnx(args.model, args.output, opts)
    total = sum((Path(args.output) / f).stat().st_size for f in manifest.files)
    print(
        f"exported {args.model} -> {args.output} ({manifest.precision}, dim {manifest.embedding_dim}, "
        f"max length {manifest.max_length}, {total / 1e6:.1f} MB)"
    )
    return 0
