"""`qexport embed ARTIFACT INPUT -o OUTPUT`: embed a corpus file, resumably.

The local engine (default) runs in this process; `--engine ray` hands the same job to
`qexport.corpus.ray_engine.embed_corpus_ray` (optional extra `qexport[ray]`). Both print one
summary line (`EmbedSummary.line`): rows in the input = rows written + rows already done.
"""

from __future__ import annotations

import argparse
from pathlib import PurePosixPath
from typing import Any

from ..util import require
from .errors import UsageError

# the options both engines take as they are, and those of --engine ray alone
COMMON: tuple[str, ...] = ("artifact", "input", "output", "instruction", "dim", "verify")
COMMON += ("max_batch_tokens", "id_column", "text_column")
RAY_ONLY = ("address", "actors", "gpus_per_actor", "checkpoint_dir")
OUTPUT_HELP = (
    "OUT.parquet (id, embedding; both engines: the local engine writes one file, --engine ray "
    "a folder of parquet files at that path; pyarrow.parquet.read_table reads either) or "
    "OUT.npy (float32 [rows, dim] in input order; local engine only)"
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _actors(text: str) -> str:
    """`--actors`: `N` or `MIN:MAX` (an autoscaling actor pool), checked by the Ray engine's
    `parse_actors` (which imports no Ray); passed on to it as the string."""
    from ..corpus.ray_job import parse_actors

    try:
        parse_actors(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names}


def add(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "embed",
        help="embed a corpus (.txt, .jsonl, .parquet) into .npy or .parquet, resumably",
        description=(
            "Embed every record of INPUT. An interrupted run, started again with the same "
            "arguments, resumes from OUTPUT.parts/ (--engine ray: from the checkpoint "
            "folder, checked against OUTPUT first: ids it records that OUTPUT lacks are "
            "computed again) and writes every id exactly once. Prints one line: N texts "
            "(W written, D already done), W + D = N."
        ),
    )
    e.add_argument("artifact", help="artifact folder")
    e.add_argument("input", help=".txt (a text per line), .jsonl or .parquet")
    e.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    e.add_argument("--instruction", default=None, help="query instruction (queries only)")
    e.add_argument("--dim", type=_positive, default=None, help="Matryoshka dimension")
    e.add_argument(
        "--max-batch-tokens",
        type=_positive,
        default=None,
        help="padded tokens per forward pass (default 4096 on CPU, 16384 on CUDA)",
    )
    e.add_argument("--engine", choices=("local", "ray"), default="local")
    e.add_argument("--id-column", default="id", help="id field/column (default id)")
    e.add_argument("--text-column", default="text", help="text field/column (default text)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument(
        "--batch-size",
        type=_positive,
        default=None,
        help="rows per forward pass at most (local, default 256); rows per Ray batch (ray)",
    )
    e.add_argument(
        "--chunk-rows",
        type=_positive,
        default=1024,
        help="rows per committed part (local engine; default 1024)",
    )
    e.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUTPUT (local engine)"
    )
    e.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip checking the artifact's sha256 checksums at load (checked by default)",
    )
    ray = e.add_argument_group("ray engine")
    ray.add_argument("--address", default=None, help="Ray cluster: auto or ray://HOST:PORT")
    ray.add_argument("--actors", type=_actors, default=None, help="N or MIN:MAX")
    ray.add_argument("--gpus-per-actor", type=float, default=None, help="GPUs per actor")
    ray.add_argument(
        "--checkpoint-dir",
        default=None,
        help="Ray Data checkpoint folder (default OUTPUT.ray-checkpoint)",
    )


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _run_ray(args)
    given = [f"--{n.replace('_', '-')}" for n in RAY_ONLY if getattr(args, n) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} only apply to --engine ray")
    from ..corpus.local import embed_corpus_local

    summary = embed_corpus_local(
        **_options(args, (*COMMON, "device", "chunk_rows", "overwrite")),
        batch_size=args.batch_size or 256,
        progress=not args.quiet,
    )
    print(summary.line())
    return 0


def _run_ray(args: argparse.Namespace) -> int:
    suffix = PurePosixPath(str(args.output).rstrip("/")).suffix.lower()
    if suffix == ".npy":
        raise UsageError(
            "--engine ray writes parquet, not .npy: use -o OUT.parquet (a folder of parquet "
            "files that pyarrow.parquet.read_table reads as one table)"
        )
    if args.overwrite:
        raise UsageError(
            "--overwrite does not apply to --engine ray (a rerun resumes from the checkpoint)"
        )
    try:
        require("ray.data", "--engine ray", "ray")  # only for --engine ray
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    from ..corpus.ray_engine import embed_corpus_ray

    summary = embed_corpus_ray(**_options(args, COMMON + RAY_ONLY), batch_size=args.batch_size)
    print(summary.line())
    return 0
