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
numbers at read time by the record layer that the local engine reads with (a read_text has
no line number, and the checkpoint filter runs straight after the read).

This module is the Ray adapter: starting Ray and the Ray Data pipeline. The job and the
driver's checks are `ray_job` (no Ray), the input side `ray_input`, the checkpoint checks
`ray_checkpoint`, the actors `ray_actor`; the output table and the summary are the local
engine's (`output`). `ray` is imported only inside functions: `qexport embed` without
`--engine ray` never loads it.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..util import require
from .output import EmbedSummary
from .ray_actor import EmbedBatch, string_id_filter_cls
from .ray_checkpoint import verify_output
from .ray_input import read_input
from .ray_job import ActorPlan, Plan, RayJob, actor_plan, local_cpus, make_job, prepare

log = logging.getLogger("qexport")


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


def _actor_plan(ray: Any, job: RayJob, resuming: bool) -> ActorPlan:
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0))
    node_cpus = max(
        (float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
        default=cpus,
    )
    return actor_plan(job, cpus, float(resources.get("GPU", 0)), node_cpus, resuming)


def run_job(job: RayJob, udf: type = EmbedBatch) -> EmbedSummary:
    """Run `job` (connecting to `job.address`, or a local Ray started for the run).

    `udf` is the actor class (tests pass a subclass that fails on purpose)."""
    require("ray.data", "--engine ray", "ray")  # Ray Data, not only Ray's core
    ray = require("ray", "--engine ray", "ray")
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
            failure = _write(ray, job, plan, udf)
            if failure is not None:
                # raised here, after _write's frames (the dataset, its executor, the actor
                # handles) are gone, and with no reference to Ray's exception: Ray Data frees
                # its actors by reference counting, so a traceback kept by the caller would keep
                # the failed run's actors, and their CPUs, for a rerun in the same process
                gc.collect()
                raise RuntimeError(
                    f"the Ray job failed ({failure}); "
                    f"run the same command again to resume from {job.checkpoint_dir}"
                )
        finally:
            if started:
                ray.shutdown()
    total = verify_output(job.output, plan.records)
    return EmbedSummary(
        total,
        total - plan.done,
        plan.done,
        plan.dim,
        time.perf_counter() - t0,
        job.output,
        engine="ray",
        checkpoint_dir=job.checkpoint_dir,
    )


@contextmanager
def _data_context(job: RayJob) -> Iterator[None]:
    """Ray Data's context for the run: the checkpoint (kept after success, ids compared as
    strings), unordered output, progress output only on a terminal (QEXPORT_RAY_PROGRESS=1
    forces it: logs). Restored afterwards."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    options = ctx.execution_options
    saved = (
        ctx.checkpoint_config,
        options.preserve_order,
        ctx.enable_progress_bars,
        ctx.print_on_execution_start,
    )
    tty = sys.stderr.isatty() or os.environ.get("QEXPORT_RAY_PROGRESS") == "1"
    config = CheckpointConfig(
        id_column="id",
        checkpoint_path=job.checkpoint_dir,
        delete_checkpoint_on_success=False,
        checkpoint_filter_cls=string_id_filter_cls(job.id_column),
    )
    config.checkpoint_actor_pool_max_size = 1  # one CPU, counted in actor_plan
    try:
        ctx.checkpoint_config, options.preserve_order = config, False
        ctx.enable_progress_bars, ctx.print_on_execution_start = tty, tty
        yield
    finally:
        (
            ctx.checkpoint_config,
            options.preserve_order,
            ctx.enable_progress_bars,
            ctx.print_on_execution_start,
        ) = saved


def _write(ray: Any, job: RayJob, plan: Plan, udf: type) -> str | None:
    """The Ray Data pipeline, with the checkpoint set on the DataContext for its duration;
    the root cause of a failed run (None: the run completed)."""
    from ray.data import ActorPoolStrategy

    with _data_context(job):
        pool = _actor_plan(ray, job, resuming=plan.done > 0)
        # blocks of one batch each (a streaming repartition), so that every actor gets work
        # and a failure loses at most the batches in flight
        ds = read_input(
            ray, job.input, plan.fmt, plan.files, plan.has_ids, job.id_column, job.text_column
        ).repartition(target_num_rows_per_block=job.batch_size)
        remote: dict[str, Any] = {}
        if pool.cpus is not None:
            remote["num_cpus"] = pool.cpus
        if job.gpus_per_actor > 0:
            remote["num_gpus"] = job.gpus_per_actor
        actor_options = {"instruction": job.instruction, "dim": job.dim}
        actor_options |= {"max_batch_tokens": job.max_batch_tokens, "threads": pool.threads}
        actor_options |= {"id_column": job.id_column, "text_column": job.text_column}
        actor_options["device"] = "cuda" if job.gpus_per_actor > 0 else "cpu"
        ds = ds.map_batches(
            udf,
            batch_size=job.batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=pool.lo, max_size=pool.hi),
            fn_constructor_args=(job.artifact,),
            fn_constructor_kwargs=actor_options,
            **remote,
        )
        each = f"{job.gpus_per_actor:g} GPU" if pool.cpus is None else f"{pool.cpus:g} CPU"
        log.info(
            "ray: %s -> %s, %d of %d rows to do, actors %d..%d (%s each), checkpoint %s",
            *(job.input, job.output, plan.records - plan.done, plan.records),
            *(pool.lo, pool.hi, each, job.checkpoint_dir),
        )
        try:
            ds.write_parquet(job.output)
        except ray.exceptions.RayError as exc:
            return _root_cause(exc)
    return None


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
