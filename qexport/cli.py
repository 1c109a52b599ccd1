"""`qexport` command line: thin; each subcommand calls one library function.

Usage errors and bad input exit with code 2 and one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .manifest import PRECISIONS

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A one-line problem with the user's input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="qexport",
        description="Export, quantize, run and validate embedding models with ONNX Runtime.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

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

    v = sub.add_parser("validate", help="compare an artifact with its PyTorch reference")
    v.add_argument("artifact", help="artifact folder")
    v.add_argument("--reference", required=True, help="the model the artifact was exported from")
    v.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    v.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="minimum per-text cosine (default per precision)",
    )
    return p


def _cmd_onnx(args: argparse.Namespace) -> int:
    from .export.api import ExportOptions, export_onnx

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
    total = sum(
        (__import__("pathlib").Path(args.output) / f).stat().st_size for f in manifest.files
    )
    print(
        f"exported {args.model} -> {args.output} ({manifest.precision}, dim {manifest.embedding_dim}, "
        f"max length {manifest.max_length}, {total / 1e6:.1f} MB)"
    )
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from .validate.parity import DEFAULT_THRESHOLDS, check_parity

    result = check_parity(args.artifact, args.reference, device=args.device)
    threshold = (
        args.threshold if args.threshold is not None else DEFAULT_THRESHOLDS[result.precision]
    )
    print(
        f"{len(result.cosines)} texts: cosine min {result.cosines.min():.6f}, mean {result.cosines.mean():.6f} "
        f"(threshold {threshold}, precision {result.precision}, providers {','.join(result.providers)})"
    )
    if result.cosines.min() < threshold:
        worst = int(result.cosines.argmin())
        print(
            f"FAIL: text {worst} ({result.texts[worst][:40]!r}) has cosine {result.cosines[worst]:.6f} < {threshold}"
        )
        return EXIT_FAIL
    print("PASS")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="qexport: %(message)s",
            stream=sys.stderr,
        )
        handler = {"onnx": _cmd_onnx, "validate": _cmd_validate}[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"qexport: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("qexport: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, NotImplementedError, RuntimeError) as exc:
        if os.environ.get("QEXPORT_DEBUG"):
            raise
        # library errors that name the problem (SourceError, OutputError, ManifestError, ...)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"qexport: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
