"""`qexport embed --engine ray`: the corpus job on Ray Data, resumable and exactly-once.

read (parquet / jsonl / txt) -> streaming repartition (blocks of --batch-size rows)
-> map_batches(EmbedBatch, compute=ActorPoolStrategy) -> write_parquet, with Ray Data's
id-keyed checkpointing (`DataContext.checkpoint_config`):

- every write task first records the ids it is about to write as a *pending* checkpoint,
  writes its parquet file (name fixed by the write id and task index, so a retried task
  overwrites its own file), then commits the checkpoint by renaming it;
- a new run first deletes the data files of pending (uncommitted) checkpoints, then drops
  every input row whose id has a committed checkpoint before it reaches the actors.

So a failed or interrupted run started again with the same output and checkpoint folder
writes only the missing ids. What Ray does not cover, we do: the checkpoint is kept after
success (Ray deletes it by default, and a second run would then write everything again); the
checkpoint is checked against the output before a run (`ray_checkpoint.reconcile`: ids it
records that the output lacks are computed again; output rows it does not record are
refused) and the output against the input after it (`verify_output`); ids are compared as strings
(Ray compares raw values: an int64 input id would never match the string written), and
inputs without ids (.txt; .jsonl / .parquet without the id field) get 1-based line or row
numbers at read time, as the local engine numbers them (a read_text has no line number, and
the checkpoint filter runs straight after the read).

Input side in `ray_input`, checkpoint checks in `ray_checkpoint`. `ray` is imported only
inside functions: `qexport embed` without `--engine ray` never loads it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import load_manifest
from .io import EmbedSummary
from .ray_actor import EmbedBatch, string_id_filter_cls
from .ray_checkpoint import reconcile, verify_output
from .ray_input import _fs, _uri, check_columns, count_records, input_format, read_input

log = logging.getLogger("qexport")

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'qexport[ray]'"
IO_CPUS = 3  # Ray Data's read, streaming repartition and write operators: one CPU each


# ---------------------------------------------------------------- options and checks


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


# ---------------------------------------------------------------- Ray pieces (lazy import)


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return ray


def _root_cause(exc: BaseException) -> str:
    """The user's exception under Ray's wrappers: RayTaskError(UserCodeException) keeps the
    original only as text, in the worker's traceback ("... was the direct cause of ...")."""
    text = str(exc)
    marker = "The above exception was the direct cause of the following exception"
    if marker in text:
        lines = [ln.strip() for ln in text.split(marker)[0].strip().splitlines()]
        if lines and lines[-1]:
            return lines[-1]
    cause = getattr(exc, "cause", None)  # RayTaskError(X).cause is the X raised remotely
    if isinstance(cause, BaseException):
        exc, text = cause, str(cause)
    first = text.strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def _cluster_plan(
    ray: Any, job: RayJob, resuming: bool
) -> tuple[int, int, float | None, int | None]:
    """(min actors, max actors, CPUs per actor (None: Ray's default), onnxruntime threads per
    actor (None: onnxruntime's default)).

    Ray Data's other operators hold one CPU each while they run: the read, the streaming
    repartition, the write and, on a resumed run, the checkpoint filter actor. With every CPU
    held by embedding actors those never get one and the job stays "backpressured" forever, so
    they are kept free and the actors share the rest (fractional CPUs on small machines). On a
    GPU cluster each actor takes `gpus_per_actor` GPUs and Ray's default of one CPU."""
    reserved = IO_CPUS + (1 if resuming else 0)
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    gpus = float(resources.get("GPU", 0))
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
        return lo, hi, None, None
    lo, hi = job.actors or (1, max(1, int((cpus - reserved) // 4)))
    if cpus - reserved < 0.1 * hi:
        raise RuntimeError(
            f"the Ray cluster has {cpus:g} CPU(s); the Ray engine keeps {reserved} for Ray "
            f"Data's read, repartition and write operators and needs more for {hi} actor(s) "
            f"(a local cluster: ray start --head --num-cpus {reserved + 2 * hi})"
        )
    node_cpus = max(
        (float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
        default=cpus,
    )
    per_actor = min((cpus - reserved) / hi, node_cpus)
    per_actor = math.floor(per_actor * 100) / 100
    return lo, hi, per_actor, max(1, int(per_actor))


def local_cpus() -> int:
    """Logical CPUs for a Ray started by the engine: the machine's cores for the actors plus
    the CPUs that Ray Data's read, repartition, write and checkpoint filter hold (mostly idle:
    embedding is the work)."""
    return (os.cpu_count() or 1) + IO_CPUS + 1


def default_checkpoint_dir(output: str) -> str:
    return output.rstrip("/") + ".ray-checkpoint"


# ---------------------------------------------------------------- the job


@dataclass(frozen=True)
class _Plan:
    """What the driver found before starting Ray."""

    fmt: str
    files: list[str]
    has_ids: bool
    records: int  # in the input
    done: int  # already in the output (and in the checkpoint)
    dim: int


def prepare(job: RayJob) -> _Plan:
    """Every check that needs no Ray: artifact (checksums unless job.verify is off), input,
    output, and the checkpoint reconciled with the output (`ray_checkpoint.reconcile`)."""
    import pyarrow.fs as pafs

    if "://" not in job.artifact and not Path(job.artifact).is_dir():
        raise ValueError(f"artifact {job.artifact} is not a folder")
    manifest = load_manifest(job.artifact, verify=job.verify)
    if job.dim is not None and job.dim not in manifest.allowed_dims:
        raise ValueError(f"dim {job.dim} is not allowed; allowed sizes: {manifest.allowed_dims}")
    fmt, files = input_format(job.input)
    has_ids = check_columns(fmt, files, job.input, job.id_column, job.text_column)
    fs, root = _fs(job.output)
    if fs.get_file_info(root).type == pafs.FileType.File:
        raise ValueError(
            f"output {job.output} is a file; --engine ray writes a folder of parquet files "
            "there: name a new path"
        )
    records = count_records(fmt, files, job.input)
    done = reconcile(job.output, job.checkpoint_dir)
    return _Plan(fmt, files, has_ids, records, done, job.dim or manifest.embedding_dim)


def run_job(job: RayJob, udf: type = EmbedBatch) -> EmbedSummary:
    """Run `job` (connecting to `job.address`, or a local Ray started for the run).

    `udf` is the actor class (tests pass a subclass that fails on purpose)."""
    ray = _require_ray()
    plan = prepare(job)
    t0 = time.perf_counter()
    if plan.done < plan.records:
        started = False
        if not ray.is_initialized():
            # no address and no RAY_ADDRESS (set inside `ray job submit`): a local Ray
            new_local = job.address is None and not os.environ.get("RAY_ADDRESS")
            local = {"num_cpus": local_cpus()} if new_local else {}
            ray.init(
                address=job.address,
                logging_level=logging.WARNING,
                include_dashboard=False,
                **local,
            )
            started = True
        try:
            _write(ray, job, plan, udf)
        finally:
            if started:
                ray.shutdown()
    total = verify_output(job.output, plan.records)
    return EmbedSummary(
        rows=total,
        written=total - plan.done,
        resumed=plan.done,
        dim=plan.dim,
        seconds=time.perf_counter() - t0,
        output=job.output,
        engine="ray",
        checkpoint_dir=job.checkpoint_dir,
    )


def _write(ray: Any, job: RayJob, plan: _Plan, udf: type) -> None:
    """The Ray Data pipeline, with the checkpoint set on the DataContext for its duration."""
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    saved = (
        ctx.checkpoint_config,
        ctx.execution_options.preserve_order,
        ctx.enable_progress_bars,
        ctx.print_on_execution_start,
    )
    # Ray Data's progress output only on a terminal (QEXPORT_RAY_PROGRESS=1 forces it: logs)
    tty = sys.stderr.isatty() or os.environ.get("QEXPORT_RAY_PROGRESS") == "1"
    try:
        lo, hi, cpus, threads = _cluster_plan(ray, job, resuming=plan.done > 0)
        config = CheckpointConfig(
            id_column="id",
            checkpoint_path=job.checkpoint_dir,
            delete_checkpoint_on_success=False,
            checkpoint_filter_cls=string_id_filter_cls(job.id_column),
        )
        config.checkpoint_actor_pool_max_size = 1  # one CPU, counted in _cluster_plan
        ctx.checkpoint_config = config
        ctx.execution_options.preserve_order = False
        ctx.enable_progress_bars = tty
        ctx.print_on_execution_start = tty
        # blocks of one batch each (a streaming repartition), so that every actor gets work
        # and a failure loses at most the batches in flight
        ds = read_input(
            ray, job.input, plan.fmt, plan.files, plan.has_ids, job.id_column, job.text_column
        ).repartition(target_num_rows_per_block=job.batch_size)
        remote: dict[str, Any] = {}
        if cpus is not None:
            remote["num_cpus"] = cpus
        if job.gpus_per_actor > 0:
            remote["num_gpus"] = job.gpus_per_actor
        ds = ds.map_batches(
            udf,
            batch_size=job.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=lo, max_size=hi),
            fn_constructor_args=(job.artifact,),
            fn_constructor_kwargs={
                "instruction": job.instruction,
                "dim": job.dim,
                "max_batch_tokens": job.max_batch_tokens,
                "id_column": job.id_column,
                "text_column": job.text_column,
                "device": "cuda" if job.gpus_per_actor > 0 else "cpu",
                "threads": threads,
            },
            **remote,
        )
        log.info(
            "ray: %s -> %s, %d of %d rows to do, actors %d..%d (%s each), checkpoint %s",
            job.input,
            job.output,
            plan.records - plan.done,
            plan.records,
            lo,
            hi,
            f"{job.gpus_per_actor:g} GPU" if cpus is None else f"{cpus:g} CPU",
            job.checkpoint_dir,
        )
        try:
            ds.write_parquet(job.output)
        except ray.exceptions.RayError as exc:
            raise RuntimeError(
                f"the Ray job failed ({_root_cause(exc)}); "
                f"run the same command again to resume from {job.checkpoint_dir}"
            ) from exc
    finally:
        (
            ctx.checkpoint_config,
            ctx.execution_options.preserve_order,
            ctx.enable_progress_bars,
            ctx.print_on_execution_start,
        ) = saved


def make_job(
    *,
    artifact: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    instruction: str | None = None,
    dim: int | None = None,
    max_batch_tokens: int | None = None,
    id_column: str = "id",
    text_column: str = "text",
    address: str | None = None,
    actors: str | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> RayJob:
    """Check the CLI's options and resolve paths (absolute, as every node must see them)."""
    gpus = float(gpus_per_actor or 0)
    if gpus < 0:
        raise ValueError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"--max-batch-tokens must be >= 1, got {max_batch_tokens}")
    out = _uri(output)
    ckpt = _uri(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out)
    if ckpt.rstrip("/").startswith(out.rstrip("/") + "/"):
        raise ValueError("the checkpoint folder must not lie inside the output folder")
    return RayJob(
        artifact=os.path.abspath(artifact),
        input=_uri(input),
        output=out,
        checkpoint_dir=ckpt,
        instruction=instruction,
        dim=dim,
        max_batch_tokens=max_batch_tokens,
        id_column=id_column,
        text_column=text_column,
        address=address,
        actors=parse_actors(actors),
        gpus_per_actor=gpus,
        batch_size=batch_size or RayJob.batch_size,
        verify=verify,
    )


def embed_corpus_ray(**options: Any) -> EmbedSummary:
    """Embed a corpus on Ray Data; the entry point of `qexport embed --engine ray`.

    Keyword options: artifact, input, output, instruction, dim, max_batch_tokens, id_column,
    text_column, address (None: a local Ray; "auto"; "ray://HOST:PORT"), actors ("N" or
    "MIN:MAX"), gpus_per_actor, batch_size (rows per actor call), checkpoint_dir (default
    OUTPUT.ray-checkpoint), verify (check the artifact's checksums in the driver; default on).

    OUTPUT (e.g. `out.parquet`) is a folder of parquet files (`id` string, `embedding`
    list<float32>), one row per input id. Started again with the same OUTPUT and checkpoint
    folder, it writes only the ids that OUTPUT lacks. Returns an EmbedSummary: rows (input
    records, all in OUTPUT), written by this run, resumed (already in OUTPUT)."""
    return run_job(make_job(**options))
