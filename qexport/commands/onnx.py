"""`qexport onnx MODEL -o DIR`: export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export.bars import LOGODDS_BARS, QUANT_PRECISIONS, bars_text
from ..manifest import PRECISIONS
from ..tasks import TASK_NAMES
from .errors import UsageError

# --activation-scales -> QuantOptions.per_token
ACTIVATION_SCALES = {"per-token": "all", "per-tensor": "none", "ffn": "ffn", "auto": "auto"}


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
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing qexport artifact (anything else is refused)",
    )
    o.add_argument(
        "--task",
        default="auto",
        choices=("auto", *TASK_NAMES),
        help="embed (sentence_embedding) or rerank (Qwen3-Reranker: one score per pair); "
        "auto (default) picks rerank for a Qwen3ForCausalLM checkpoint named *reranker* "
        "without modules.json",
    )
    q = o.add_argument_group(f"quantization ({', '.join(QUANT_PRECISIONS)})")
    q.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="target device: the float base is fp32 for cpu, fp16 for cuda (default cpu); "
        "int8-dynamic is cpu only",
    )
    q.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="MatMulNBits block size (default 32)",
    )
    q.add_argument(
        "--accuracy-level",
        type=int,
        default=None,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits compute type (default 4 on cpu: int8 activations; unset on cuda)",
    )
    q.add_argument(
        "--calibration",
        default=None,
        metavar="FILE",
        help="calibration and check texts, one per line (default: the built-in set)",
    )
    q.add_argument(
        "--method",
        default=None,
        choices=("rtn", "gptq"),
        help="int8/int4 weights: round-to-nearest or GPTQ from the calibration texts "
        "(default: rtn for int8, gptq for int4)",
    )
    q.add_argument(
        "--zero-points",
        default=None,
        choices=("symmetric", "asymmetric"),
        help="int8/int4 with gptq: symmetric blocks or blocks with a zero point "
        "(default: symmetric for int8, asymmetric for int4)",
    )
    q.add_argument(
        "--activation-scales",
        default=None,
        choices=tuple(ACTIVATION_SCALES),
        help="int8-dynamic: one activation scale per token on every projection (per-token), "
        "per tensor (fastest, MiniLM held-out min cosine 0.9609), per token on the FFN's "
        "output projection only (ffn), or per token only where the calibration says it pays "
        "(auto); default: ffn for BERT, per-token for the other families",
    )
    q.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="the fidelity bar the check texts must hold, else the export is refused "
        f"(default {bars_text()})",
    )
    q.add_argument(
        "--max-logodds-diff",
        type=float,
        default=None,
        help="--task rerank int8: refuse when a check pair's log-odds move more than this "
        f"vs the float graph (default {LOGODDS_BARS['int8']})",
    )
    q.add_argument(
        "--no-check",
        action="store_true",
        help="int8/int4: skip running the float and quantized graphs on the check texts",
    )


def _check(args: argparse.Namespace) -> None:
    """Refuse what cannot work before any work starts (UsageError: exit 2, one line)."""
    from ..export.quantize.matmul_nbits import BLOCK_SIZES

    if args.precision not in PRECISIONS:
        raise UsageError(
            f"unknown precision {args.precision!r}; choose from {', '.join(PRECISIONS)}"
        )
    if args.max_length is not None and args.max_length < 2:
        raise UsageError(f"--max-length must be at least 2, got {args.max_length}")
    if args.block_size is not None and args.block_size not in BLOCK_SIZES:
        raise UsageError(
            f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {args.block_size}"
        )
    _check_quant(args)


def _check_quant(args: argparse.Namespace) -> None:
    if args.precision == "int8-dynamic" and args.device != "cpu":
        raise UsageError("int8-dynamic is CPU only; use --precision int8 or int4 for cuda")
    if args.min_cosine is not None and not 0.0 < args.min_cosine <= 1.0:
        raise UsageError(f"--min-cosine must be in (0, 1], got {args.min_cosine}")
    if args.zero_points == "asymmetric" and args.method == "rtn":
        raise UsageError("--zero-points asymmetric needs --method gptq")
    if args.calibration is not None and not Path(args.calibration).is_file():
        raise UsageError(f"--calibration file {args.calibration!r} does not exist")
    if args.activation_scales is not None and args.precision != "int8-dynamic":
        raise UsageError("--activation-scales applies to --precision int8-dynamic only")
    if args.max_logodds_diff is not None and args.max_logodds_diff <= 0:
        raise UsageError(f"--max-logodds-diff must be > 0, got {args.max_logodds_diff}")


def run(args: argparse.Namespace) -> int:
    from ..export.api import ExportOptions, export_onnx
    from ..export.quantize import QuantOptions

    _check(args)
    opts = ExportOptions(
        task=args.task,
        precision=args.precision,
        max_length=args.max_length,
        token_embeddings=args.token_embeddings,
        tokenizer=args.tokenizer,
        revision=args.revision,
        overwrite=args.overwrite,
        progress=not args.quiet,
        device=args.device,
        quant=QuantOptions(
            block_size=args.block_size,
            accuracy_level=args.accuracy_level,
            calibration=args.calibration,
            check=not args.no_check,
            method=args.method,
            symmetric=None if args.zero_points is None else args.zero_points == "symmetric",
            min_cosine=args.min_cosine,
            max_logodds_diff=args.max_logodds_diff,
            per_token=ACTIVATION_SCALES.get(args.activation_scales or ""),
        ),
    )
    manifest = export_onnx(args.model, args.output, opts)
    total = sum((Path(args.output) / f).stat().st_size for f in manifest.files)
    q = manifest.quantization
    if q and "check" in q and "min_cosine" in q["check"]:
        print(
            f"quantization: {q['method']}, min cosine {q['check']['min_cosine']:.5f} vs the "
            f"{q['base_precision']} graph on {q['check']['texts']} texts"
        )
    if manifest.task == "rerank":
        if q and "check" in q and "max_abs_logodds_diff" in q["check"]:
            c = q["check"]
            print(
                f"quantization: max |log-odds diff| {c['max_abs_logodds_diff']:.5f}, top-3 "
                f"overlap {c['top3_overlap_mean']:.3f} vs the float graph on {c['pairs']} pairs"
            )
        print(
            f"exported {args.model} -> {args.output} (reranker, {manifest.precision}, "
            f"max length {manifest.max_length}, {total / 1e6:.1f} MB)"
        )
        return 0
    print(
        f"exported {args.model} -> {args.output} ({manifest.precision}, dim {manifest.embedding_dim}, "
        f"max length {manifest.max_length}, {total / 1e6:.1f} MB)"
    )
    return 0
