"""`qexport validate DIR --reference MODEL`: parity against the PyTorch reference."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
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


def run(args: argparse.Namespace) -> int:
    from ..validate.parity import DEFAULT_THRESHOLDS, check_parity

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
        return 1
    print("PASS")
    return 0
