"""`qexport validate DIR --reference MODEL` when DIR is a reranker (manifest task "rerank"):
agreement with the model card's recipe, optional speed and memory; exit 0 pass, 1 fail."""

from __future__ import annotations

import argparse

from .errors import UsageError


def run_rerank(args: argparse.Namespace) -> int:
    from ..validate.rerank import (
        RerankValidateOptions,
        parse_thresholds,
        run_rerank_validation,
        write_rerank_report,
    )
    from ..validate.retrieval import DatasetError, load_beir

    if args.texts is not None or args.threshold is not None:
        raise UsageError(
            "--texts and --threshold are for embedding artifacts; a reranker "
            "validates on --dataset (BEIR) or the built-in check pairs"
        )
    try:
        thresholds = parse_thresholds(args.thresholds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.repeats < 1 or (args.max_queries is not None and args.max_queries < 1):
        raise UsageError("--repeats and --max-queries must be >= 1")
    if args.dataset is not None:
        try:  # fail before the slow part
            load_beir(args.dataset, max_corpus=1, max_queries=1)
        except (DatasetError, OSError) as exc:
            raise UsageError(str(exc)) from None
    if args.device not in ("cpu", "auto"):
        raise UsageError("reranker validation runs on cpu")
    opts = RerankValidateOptions(
        reference=args.reference,
        dataset=args.dataset,
        max_queries=args.max_queries or 10,
        thresholds=thresholds,
        speed=bool(args.report) if args.speed is None else args.speed,
        repeats=args.repeats,
        seed=args.seed,
    )
    r = run_rerank_validation(args.artifact, opts)
    a = r["agreement"]
    print(
        f"{a['pairs']} pairs / {a['queries']} queries: max |log-odds diff| "
        f"{a['logodds_max_diff']:.3g}, Spearman min {a['spearman_min']:.5f}, top-3 overlap "
        f"{a['top3_overlap_min']:.3f}, top-1 agreement {a['top1_agreement']:.3f} "
        f"(precision {r['artifact']['precision']})"
    )
    if r["speed"]:
        s = r["speed"]
        print(
            f"speed: {s['onnxruntime']['pairs_per_s']:.1f} pairs/s vs PyTorch "
            f"{s['pytorch']['pairs_per_s']:.1f} ({s['speedup']:.2f}x)"
        )
    if args.report:
        print(f"report: {write_rerank_report(r, args.report)['html']}")
    for c in r["checks"]:
        if c["status"] == "fail":
            print(
                f"FAIL: {c['name']} = {c['value']:.6g} ({c['comparison']} {c['threshold']} required)"
            )
    if r["verdict"] == "fail":
        return 1
    print("PASS")
    return 0
