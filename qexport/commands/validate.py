"""`qexport validate DIR --reference MODEL`: fidelity, retrieval agreement, speed and memory
against the PyTorch reference; a report in json, Markdown and HTML. Exit 0 pass, 1 below a
threshold, 2 usage error."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .options import from_args

if TYPE_CHECKING:
    from ..validate.suite import ValidateOptions


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validate", help="compare an artifact with its PyTorch reference")
    v.add_argument("artifact", help="artifact folder")
    v.add_argument("--reference", required=True, help="the model the artifact was exported from")
    v.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    v.add_argument(
        "--texts", default=None, help="texts file: one per line (.txt) or {'text': ...} (.jsonl)"
    )
    v.add_argument(
        "--dataset", default=None, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv)"
    )
    v.add_argument(
        "--max-corpus",
        type=int,
        default=None,
        help="subsample the corpus to N documents (relevant ones kept)",
    )
    v.add_argument("--max-queries", type=int, default=None, help="subsample the queries to N")
    v.add_argument("--report", default=None, help="folder for report.json, report.md, report.html")
    v.add_argument(
        "--thresholds",
        default=None,
        help="overrides, KEY=VALUE,... (cosine_min, cosine_mean, max_abs_diff, batch_cosine_min, "
        "padding_cosine_min, matryoshka_cosine_min, instruction_cosine_min, known_answer_tol, "
        "ndcg10_drop_max, top10_overlap_min); VALUE 'none' switches a check off",
    )
    v.add_argument(
        "--threshold", type=float, default=None, help="minimum per-text cosine (= cosine_min)"
    )
    v.add_argument(
        "--speed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the speed and memory grid (default: on with --report, off without)",
    )
    v.add_argument(
        "--batch-sizes", type=_ints, default=(1, 8, 32), help="speed grid (default 1,8,32)"
    )
    v.add_argument(
        "--lengths",
        type=_ints,
        default=(16, 128, 512),
        help="speed grid, tokens per text (default 16,128,512)",
    )
    v.add_argument("--repeats", type=int, default=5, help="timed calls per grid cell (default 5)")
    v.add_argument("--warmup", type=int, default=1, help="untimed calls per grid cell (default 1)")
    v.add_argument("--seed", type=int, default=0, help="subsampling seed")


def read_texts(path: str) -> list[str]:
    """`--texts`: read by the corpus record layer (`corpus.io.read_texts`: its limits and
    errors); a problem with the file is a usage error."""
    from ..corpus.io import CorpusError
    from ..corpus.io import read_texts as read

    try:
        return read(path, "texts file")
    except CorpusError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..manifest import ManifestError, load_manifest

    try:
        task = load_manifest(args.artifact).task
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    if task == "rerank":  # a reranker artifact: commands/validate_rerank.py
        from .validate_rerank import run_rerank

        return run_rerank(args)
    return _run_embed(args)


def _run_embed(args: argparse.Namespace) -> int:
    from ..validate.report import write_report
    from ..validate.suite import run_validation

    report = run_validation(args.artifact, _embed_options(args))
    _print_summary(report)
    if args.report:
        paths = write_report(report, args.report)
        print(f"report: {paths['html']}")
    for c in report["checks"]:
        if c["status"] == "fail":
            print(
                f"FAIL: {c['name']} = {_f(c['value'])} ({c['comparison']} {c['threshold']} required)"
                + _worst(c)
            )
    if report["verdict"] == "fail":
        return 1
    print("PASS")
    return 0


def _embed_options(args: argparse.Namespace) -> ValidateOptions:
    """The checked arguments as `ValidateOptions` (UsageError on the first bad one)."""
    from ..validate.retrieval import DatasetError, load_beir
    from ..validate.suite import ValidateOptions
    from ..validate.thresholds import parse_overrides

    try:
        thresholds = parse_overrides(args.thresholds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threshold is not None:
        thresholds["cosine_min"] = args.threshold
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    for name in ("max_corpus", "max_queries"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if args.dataset is not None:
        try:  # fail before the slow part
            load_beir(args.dataset, max_corpus=1, max_queries=1)
        except (DatasetError, OSError) as exc:
            raise UsageError(str(exc)) from None
    texts = read_texts(args.texts) if args.texts else None
    return from_args(
        ValidateOptions,
        args,
        texts=texts,
        texts_source=args.texts or "built-in",
        thresholds=thresholds,
        speed=bool(args.report) if args.speed is None else args.speed,
        progress=not args.quiet,
    )


def _print_summary(report: dict[str, Any]) -> None:
    """Fidelity, then retrieval and speed when they ran, one line each."""
    pt = report["fidelity"]["per_text"]
    threshold = report["thresholds"]["cosine_min"]
    providers = ",".join(report["environment"]["onnxruntime_providers_used"])
    print(
        f"{pt['texts']} texts: cosine min {_f(pt['cosine_min'])}, mean {_f(pt['cosine_mean'])} "
        f"(threshold {threshold}, precision {report['artifact']['precision']}, providers {providers})"
    )
    if report["retrieval"]:
        rt = report["retrieval"]
        print(
            f"retrieval {rt['dataset']}: nDCG@10 {rt['onnxruntime']['ndcg@10']:.5f} (PyTorch "
            f"{rt['pytorch']['ndcg@10']:.5f}), top-10 overlap {rt['top10_overlap_mean']:.3f}"
        )
    if report["speed"]:
        grid = report["speed"]["grid"]
        best = max(grid, key=lambda g: g["onnxruntime"]["tokens_per_s"])
        print(
            f"speed: up to {best['onnxruntime']['tokens_per_s']:.0f} tokens/s (batch "
            f"{best['batch_size']}, length {best['length']}), {best['speedup']:.2f}x PyTorch there"
        )


def _f(v: object) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def _worst(c: dict) -> str:
    d = c.get("detail")
    if isinstance(d, dict) and d.get("worst_texts"):
        w = d["worst_texts"][0]
        return f"; worst text {w['index']} ({w['text'][:40]!r})"
    if isinstance(d, dict) and d.get("worst_text"):
        return f"; worst text {d['worst_text'][:40]!r}"
    return ""
