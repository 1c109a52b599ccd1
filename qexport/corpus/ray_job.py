"""The Ray engine's job, checked before Ray starts (no `ray` import here): the options
(`make_job`, `parse_actors`), the driver's checks of artifact, input, output and checkpoint
(`prepare`), and the actor pool sized from the cluster's resources (`actor_plan`).

The Ray Data pipeline that runs the job is `ray_engine`; its input side `ray_input`, its
checkpoint checks `ray_checkpoint`, its actors `ray_actor`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import load_manifest
from .io import CorpusError, check_output_not_input
from .ray_checkpoint import reconcile
from .ray_input import _fs, _uri, check_columns, count_records, input_files

IO_CPUS = 3  # Ray Data's read, streaming repartition and write operators: one CPU each


@dataclass(frozen=True)
class RayJob:
    artifact: str
    input: str
    output: str
    checkpoint_dir: str
    instruction: str | None = None
    dim: int | None = None
    max_batch_tokens: int | None = None
    id_column: str = "id"
    text_column: str = "text"
    address: str | None = None
    actors: tuple[int, int] | None = None
    gpus_per_actor: float = 0.0
    batch_size: int = 1024
    verify: bool = True


def parse_actors(spec: str | int | None) -> tuple[int, int] | None:
    """ "N" -> (N, N); "MIN:MAX" -> (MIN, MAX); None -> None (chosen from the cluster)."""
    if spec is None:
        return None
    text = str(spec).strip()
    parts = text.split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise ValueError(f"--actors must be N or MIN:MAX (integers), got {text!r}") from None
    if len(parts) > 2 or lo < 1 or hi < lo:
        raise ValueError(f"--actors must be N >= 1 or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def default_checkpoint_dir(output: str) -> str:
    return output.rstrip("/") + ".ray-checkpoint"


def make_job(
    *,
    artifact: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    actors: str | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> RayJob:
    """Check the CLI's options and resolve paths (absolute, as every node must see them).
    `options`: the RayJob fields taken as they are (instruction, dim, max_batch_tokens,
    id_column, text_column, address, verify)."""
    gpus = float(gpus_per_actor or 0)
    if gpus < 0:
        raise ValueError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    tokens = options.get("max_batch_tokens")
    if tokens is not None and tokens < 1:
        raise ValueError(f"--max-batch-tokens must be >= 1, got {tokens}")
    out, src = _uri(output), _uri(input)
    if "://" in out or "://" in src:
        if out.rstrip("/") == src.rstrip("/"):
            raise CorpusError(f"output {out} is the input: write the embeddings elsewhere")
    else:
        check_output_not_input(src, out)
    ckpt = _uri(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out)
    if ckpt.rstrip("/").startswith(out.rstrip("/") + "/"):
        raise ValueError("the checkpoint folder must not lie inside the output folder")
    return RayJob(
        os.path.abspath(artifact),
        src,
        out,
        ckpt,
        actors=parse_actors(actors),
        gpus_per_actor=gpus,
        batch_size=batch_size or RayJob.batch_size,
        **options,
    )


@dataclass(frozen=True)
class Plan:
    """What the driver found before starting Ray."""

    fmt: str
    files: list[str]
    has_ids: bool
    records: int  # in the input
    done: int  # already in the output (and in the checkpoint)
    dim: int


def prepare(job: RayJob) -> Plan:
    """Every check that needs no Ray: artifact (checksums unless job.verify is off), input,
    output, and the checkpoint reconciled with the output (`ray_checkpoint.reconcile`)."""
    import pyarrow.fs as pafs

    if "://" not in job.artifact and not Path(job.artifact).is_dir():
        raise ValueError(f"artifact {job.artifact} is not a folder")
    manifest = load_manifest(job.artifact, verify=job.verify)
    if job.dim is not None and job.dim not in manifest.allowed_dims:
        raise ValueError(f"dim {job.dim} is not allowed; allowed sizes: {manifest.allowed_dims}")
    fmt, files = input_files(job.input)
    has_ids = check_columns(fmt, files, job.input, job.id_column, job.text_column)
    fs, root = _fs(job.output)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ValueError(
            f"output {job.output} is a file; --engine ray writes a folder of parquet files "
            "there: name a new path"
        )
    records = count_records(fmt, files, job.input)
    done = reconcile(job.output, job.checkpoint_dir)
    return Plan(fmt, files, has_ids, records, done, job.dim or manifest.embedding_dim)


@dataclass(frozen=True)
class ActorPlan:
    """The embedding actor pool: MIN..MAX actors, CPUs per actor (None: Ray's default),
    onnxruntime threads per actor (None: onnxruntime's default)."""

    lo: int
    hi: int
    cpus: float | None
    threads: int | None


def actor_plan(
    job: RayJob, cpus: float, gpus: float, node_cpus: float, resuming: bool
) -> ActorPlan:
    """The actor pool for a cluster of `cpus` CPUs and `gpus` GPUs (`node_cpus` on its largest
    node).

    Ray Data's other operators hold one CPU each while they run: the read, the streaming
    repartition, the write and, on a resumed run, the checkpoint filter actor. With every CPU
    held by embedding actors those never get one and the job stays "backpressured" forever, so
    they are kept free and the actors share the rest (fractional CPUs on small machines). On a
    GPU cluster each actor takes `gpus_per_actor` GPUs and Ray's default of one CPU."""
    reserved = IO_CPUS + (1 if resuming else 0)
    if job.gpus_per_actor > 0:
        if gpus < job.gpus_per_actor:
            raise RuntimeError(
                f"--gpus-per-actor {job.gpus_per_actor:g} but the Ray cluster has {gpus:g} GPU(s)"
            )
        lo, hi = job.actors or (1, max(1, int(gpus // job.gpus_per_actor)))
        if cpus < reserved + hi:
            raise RuntimeError(
                f"the Ray cluster has {cpus:g} CPU(s); {hi} GPU actors need {reserved + hi}"
            )
        return ActorPlan(lo, hi, None, None)
    lo, hi = job.actors or (1, max(1, int((cpus - reserved) // 4)))
    if cpus - reserved < 0.1 * hi:
        raise RuntimeError(
            f"the Ray cluster has {cpus:g} CPU(s); the Ray engine keeps {reserved} for Ray "
            f"Data's read, repartition and write operators and needs more for {hi} actor(s) "
            f"(a local cluster: ray start --head --num-cpus {reserved + 2 * hi})"
        )
    per_actor = math.floor(min((cpus - reserved) / hi, node_cpus) * 100) / 100
    return ActorPlan(lo, hi, per_actor, max(1, int(per_actor)))


def local_cpus() -> int:
    """Logical CPUs for a Ray started by the engine: the machine's cores for the actors plus
    the CPUs that Ray Data's read, repartition, write and checkpoint filter hold (mostly idle:
    embedding is the work)."""
    return (os.cpu_count() or 1) + IO_CPUS + 1
