"""`qexport validate DIR --reference MODEL`: one suite for every task, chosen by the artifact's
manifest (embed: fidelity, retrieval agreement; rerank: agreement with the model card's
recipe), speed and memory against the PyTorch reference, a report in json, Markdown and HTML.
Exit 0 pass, 1 below a threshold, 2 usage error."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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
    from ..validate.thresholds import KEYS

    v = sub.add_parser("validate", help="compare an artifact with its PyTorch reference")
    v.add_argument("artifact", help="artifact folder (an embedding model or a reranker)")
    v.add_argument("--reference", required=True, help="the model the artifact was exported from")
    v.add_argument(
        "--device",
        default="auto",
        choices=("cpu", "cuda", "auto"),
        help="where the artifact and the reference run (default auto: CUDA when the "
        "artifact's precision and the machine allow)",
    )
    v.add_argument(
        "--texts",
        default=None,
        help="embeddings: texts file, one per line (.txt) or {'text': ...} (.jsonl)",
    )
    v.add_argument(
        "--dataset", default=None, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels.tsv)"
    )
    v.add_argument(
        "--max-corpus",
        type=int,
        default=None,
        help="embeddings: subsample the corpus to N documents (relevant ones kept)",
    )
    v.add_argument(
        "--max-queries", type=int, default=None, help="subsample the queries to N (rerank: 10)"
    )
    v.add_argument("--report", default=None, help="folder for report.json, report.md, report.html")
    known = "; ".join(f"{task}: {', '.join(keys)}" for task, keys in KEYS.items())
    v.add_argument(
        "--thresholds",
        default=None,
        help=f"overrides, KEY=VALUE,... of the artifact's task ({known}); VALUE 'none' "
        "switches a check off",
    )
    v.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="embeddings: minimum per-text cosine (= cosine_min)",
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
        default=None,
        help="speed grid, tokens per row (default: embed 16,128,512; rerank 128,256,512)",
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


def _check_report_folder(folder: str) -> None:
    """Create `folder` and write a file in it now, so that a report that cannot be written fails
    before the validation runs, not after."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"--report {folder}: cannot write a report there ({why})") from None


def run(args: argparse.Namespace) -> int:
    from ..manifest import ManifestError, load_manifest
    from ..validate.report import write_report
    from ..validate.suite import run_validation, summary

    try:
        task = load_manifest(args.artifact).task
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    if args.report:
        _check_report_folder(args.report)
    report = run_validation(args.artifact, _options(args, task))
    for line in summary(report):
        print(line)
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


# options that only one task reads: (argument, task, what to use instead)
TASK_ONLY = (
    ("texts", "embed", "a reranker validates on --dataset (BEIR) or the built-in check pairs"),
    ("threshold", "embed", "use --thresholds KEY=VALUE with the reranker's keys"),
    ("max_corpus", "embed", "a reranker's first stage reads the whole corpus"),
)


def _options(args: argparse.Namespace, task: str) -> ValidateOptions:
    """The checked arguments as `ValidateOptions` (UsageError on the first bad one)."""
    from ..validate.retrieval import DatasetError, load_beir
    from ..validate.suite import ValidateOptions
    from ..validate.thresholds import parse_overrides

    for name, only, instead in TASK_ONLY:
        if getattr(args, name) is not None and task != only:
            flag = f"--{name.replace('_', '-')}"
            raise UsageError(f"{flag} is for {only} artifacts, this one is {task}: {instead}")
    try:
        thresholds = parse_overrides(args.thresholds, task)
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


def _f(v: object) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def _worst(c: dict) -> str:
    d = c.get("detail")
    if isinstance(d, dict) and d.get("worst_texts"):
        w = d["worst_texts"][0]
        return f"; worst text {w['index']} ({w['text'][:40]!r})"
    if isinstance(d, dict) and d.get("worst_text"):
        return f"; worst text {d['worst_text'][:40]!r}"
    if isinstance(d, dict) and d.get("worst"):
        w = d["worst"][0]
        return f"; worst pair ({w['query'][:30]!r}, {w['document'][:30]!r})"
    return ""
