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
success (Ray deletes it by default, and a second run would then write everything again), an
output folder that holds rows but has no checkpoint is refused, ids are compared as strings
(Ray compares raw values: an int64 input id would never match the string written), and
inputs without ids (.txt; .jsonl / .parquet without the id field) get 1-based line or row
numbers at read time, as the local engine numbers them (a read_text has no line number, and
the checkpoint filter runs straight after the read).

`ray` is imported only inside these functions: `qexport embed` without `--engine ray` never
loads it.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("qexport")

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'qexport[ray]'"
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".txt": "txt"}
PENDING_SUFFIX = ".pending.parquet"  # ray.data.checkpoint.checkpoint_writer's name for them
LINES_PER_BLOCK = 4096
IO_CPUS = 3  # Ray Data's read, streaming repartition and write operators: one CPU each
FORWARD_ROWS = 256  # rows per forward pass at most (with max_batch_tokens), as the local engine


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


def _uri(path: str | os.PathLike[str]) -> str:
    """Local paths become absolute (workers on other nodes need the same absolute path on a
    shared file system); URIs (s3://, gs://, ...) stay as they are."""
    text = str(path)
    return text if "://" in text else os.path.abspath(text)


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def _files(fs: Any, root: str) -> list[str]:
    """Data files under `root` (a file or a folder), skipping hidden and `_` names."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [root]
    if info.type != pafs.FileType.Directory:
        return []
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(
        e.path
        for e in entries
        if e.type == pafs.FileType.File
        and not any(p.startswith((".", "_")) for p in posixpath.relpath(e.path, root).split("/"))
    )


def input_format(uri: str) -> tuple[str, list[str]]:
    """(format, files) of INPUT: one .parquet/.jsonl/.txt file, or a folder of one kind."""
    fs, root = _fs(uri)
    files = _files(fs, root)
    if not files:
        raise ValueError(f"input {uri} does not exist or holds no files")
    kinds = {FORMATS.get(posixpath.splitext(f)[1].lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        found = sorted({posixpath.splitext(f)[1] or "(none)" for f in files})
        raise ValueError(
            f"input {uri}: expected .parquet, .jsonl or .txt files of one kind, found {found}"
        )
    return kinds.pop(), files  # type: ignore[return-value]


def _jsonl_fields(fs: Any, path: str) -> set[str]:
    """Field names of the first JSON object in a .jsonl file."""
    import io
    import json

    with fs.open_input_stream(path) as f:
        for n, line in enumerate(io.TextIOWrapper(f, encoding="utf-8"), 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: each line must be a JSON object")
                return set(row)
    return set()


def check_columns(fmt: str, files: list[str], uri: str, job: RayJob) -> bool:
    """Check the text (and id) columns; return whether the input carries its own ids."""
    fs, _ = _fs(uri)
    if fmt == "txt":
        return False
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = set(pq.read_schema(files[0], filesystem=fs).names)
    else:
        names = _jsonl_fields(fs, files[0])
    if job.text_column not in names:
        raise ValueError(
            f"{files[0]} has no {job.text_column!r} column (columns: {sorted(names)}); "
            "set --text-column"
        )
    return job.id_column in names


# ---------------------------------------------------------------- the actor


class EmbedBatch:
    """One Embedder per Ray actor (built from the artifact path on the actor's node).

    Takes a pyarrow batch with the id and text columns, returns `id` (string) and
    `embedding` (list<float32>)."""

    def __init__(
        self,
        artifact: str,
        *,
        instruction: str | None,
        dim: int | None,
        max_batch_tokens: int | None,
        id_column: str,
        text_column: str,
        device: str,
        threads: int | None,
    ) -> None:
        from qexport.runtime import Embedder

        if threads is not None:  # whole CPUs of this actor, at most this node's cores
            threads = max(1, min(threads, os.cpu_count() or 1))
        kwargs: dict[str, Any] = {"device": device, "threads": threads}
        if max_batch_tokens is not None:
            kwargs["max_batch_tokens"] = max_batch_tokens
        self.embedder = Embedder(artifact, **kwargs)
        self.instruction = instruction
        self.dim = dim
        self.id_column = id_column
        self.text_column = text_column

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(
            texts, instruction=self.instruction, dim=self.dim, batch_size=FORWARD_ROWS
        )

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = pc.cast(batch[self.id_column], pa.string())
        texts = batch[self.text_column]
        for name, col in (("id", ids), ("text", texts)):
            if col.null_count:
                row = pc.index(pc.is_null(col), True).as_py()
                raise ValueError(f"{name} is missing (null) in a row (batch row {row})")
        vectors = self.embed(texts.to_pylist())
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
        embedding = pa.ListArray.from_arrays(offsets, flat)
        return pa.table({"id": ids.combine_chunks(), "embedding": embedding})


# ---------------------------------------------------------------- Ray pieces (lazy import)


def _require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return ray


def _string_id_filter_cls(input_id_column: str) -> type:
    """Ray's checkpoint filter, comparing the input's id column, as strings, with the `id`
    column of the checkpoint (Ray's own compares raw values: an int64 input id never equals
    the string written). Built lazily so that this module imports without Ray; the class goes
    to the filter actor by value."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from ray.data.block import BlockAccessor
    from ray.data.checkpoint.checkpoint_filter import NumpyArrayBasedCheckpointFilter

    class StringIdCheckpointFilter(NumpyArrayBasedCheckpointFilter):
        def filter_rows_for_block(self, block: Any) -> Any:
            done = self.checkpointed_ids  # sorted (Ray's checkpoint manager sorts them)
            block = BlockAccessor.for_block(block).to_arrow()  # read_json may give pandas
            if done.shape[0] == 0 or block.num_rows == 0:
                return block
            ids = pc.fill_null(pc.cast(block[input_id_column], pa.string()), "")
            ids = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
            pos = np.minimum(np.searchsorted(done, ids), done.shape[0] - 1)
            return block.filter(pa.array(done[pos] != ids))

    return StringIdCheckpointFilter


def _numbered_source(
    files: list[str], fmt: str, root: str, id_column: str, text_column: str
) -> Any:
    """A Ray datasource for inputs without ids (.txt; .jsonl and .parquet without the id
    field): one read task per file; a row's id is its 1-based line (row) number, as the local
    engine numbers them (`file:line` when the input is a folder of several files). The id
    exists before Ray's checkpoint filter, which runs straight after the read; a read_text
    and a later map could not number the lines."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    def rows(path: str) -> Iterator[tuple[int, Any]]:
        fs, p = _fs(path)
        if fmt == "parquet":
            n = 0
            with fs.open_input_file(p) as f:
                for batch in pq.ParquetFile(f).iter_batches(
                    batch_size=LINES_PER_BLOCK, columns=[text_column]
                ):
                    for text in batch.column(0).to_pylist():
                        n += 1
                        yield n, text
            return
        with fs.open_input_stream(p) as f:
            for n, line in enumerate(io.TextIOWrapper(f, encoding="utf-8"), 1):
                line = line.rstrip("\n")
                if fmt == "txt":
                    yield n, line
                elif line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or text_column not in row:
                        raise ValueError(f"{path}:{n}: no {text_column!r} field")
                    yield n, row[text_column]

    def read_file(path: str, prefix: str) -> Iterator[pa.Table]:
        ids: list[str] = []
        texts: list[Any] = []
        for n, text in rows(path):
            if not isinstance(text, str):
                raise ValueError(f"{path}: record {n}: {text_column!r} is not a string")
            ids.append(f"{prefix}{n}")
            texts.append(text)
            if len(ids) == LINES_PER_BLOCK:
                yield pa.table({id_column: ids, text_column: texts})
                ids, texts = [], []
        if ids:
            yield pa.table({id_column: ids, text_column: texts})

    class NumberedDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
        ) -> list[Any]:
            tasks = []
            for path in files:
                prefix = "" if len(files) == 1 else posixpath.relpath(path, root) + ":"
                meta = BlockMetadata(
                    num_rows=None, size_bytes=None, input_files=(path,), exec_stats=None
                )
                tasks.append(
                    ReadTask(
                        partial(read_file, path, prefix),
                        meta,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
            return tasks

    return NumberedDatasource()


def _read(ray: Any, uri: str, fmt: str, files: list[str], has_ids: bool, job: RayJob) -> Any:
    if fmt == "parquet" and has_ids:
        return ray.data.read_parquet(uri).select_columns([job.id_column, job.text_column])
    if fmt == "jsonl" and has_ids:
        return ray.data.read_json(uri, lines=True, file_extensions=["jsonl"])
    root = _fs(uri)[1]
    src = _numbered_source(files, fmt, root, job.id_column, job.text_column)
    return ray.data.read_datasource(src)


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


# ---------------------------------------------------------------- checkpoint bookkeeping


def _committed_rows(checkpoint_uri: str) -> tuple[int, bool]:
    """(rows in committed checkpoint files, whether the folder holds any file at all)."""
    import pyarrow.dataset as pads

    fs, root = _fs(checkpoint_uri)
    files = _files(fs, root)
    committed = [f for f in files if f.endswith(".parquet") and not f.endswith(PENDING_SUFFIX)]
    rows = pads.dataset(committed, filesystem=fs, format="parquet").count_rows() if committed else 0
    return rows, bool(files)


def _output_rows(output_uri: str) -> int:
    import pyarrow.dataset as pads

    fs, root = _fs(output_uri)
    files = [f for f in _files(fs, root) if f.endswith(".parquet")]
    return pads.dataset(files, filesystem=fs, format="parquet").count_rows() if files else 0


def _check_resume(job: RayJob) -> int:
    """Rows already done; refuses an output folder that holds rows without a checkpoint (a
    run over it would write every id a second time)."""
    done, any_files = _committed_rows(job.checkpoint_dir)
    if not any_files:
        existing = _output_rows(job.output)
        if existing:
            raise ValueError(
                f"output {job.output} already holds {existing} rows but the checkpoint folder "
                f"{job.checkpoint_dir} is empty: pass the checkpoint folder of the run that "
                "wrote it (--checkpoint-dir), or a new output folder"
            )
    return done


def default_checkpoint_dir(output: str) -> str:
    return output.rstrip("/") + ".ray-checkpoint"


# ---------------------------------------------------------------- the job


def run_job(job: RayJob, udf: type = EmbedBatch) -> dict[str, Any]:
    """Run `job` (connecting to `job.address`, or a local Ray started for the run).

    `udf` is the actor class (tests pass a subclass that fails on purpose)."""
    ray = _require_ray()
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.checkpoint import CheckpointConfig

    if not Path(job.artifact).is_dir() and "://" not in job.artifact:
        raise ValueError(f"artifact {job.artifact} is not a folder")
    fmt, files = input_format(job.input)
    has_ids = check_columns(fmt, files, job.input, job)
    done_before = _check_resume(job)

    started = False
    if not ray.is_initialized():
        # no address and no RAY_ADDRESS (set inside `ray job submit`): a local Ray, sized here
        new_local = job.address is None and not os.environ.get("RAY_ADDRESS")
        local = {"num_cpus": local_cpus()} if new_local else {}
        ray.init(
            address=job.address, logging_level=logging.WARNING, include_dashboard=False, **local
        )
        started = True
    t0 = time.perf_counter()
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
        lo, hi, cpus, threads = _cluster_plan(ray, job, resuming=done_before > 0)
        config = CheckpointConfig(
            id_column="id",
            checkpoint_path=job.checkpoint_dir,
            delete_checkpoint_on_success=False,
            checkpoint_filter_cls=_string_id_filter_cls(job.id_column),
        )
        config.checkpoint_actor_pool_max_size = 1  # one CPU, counted in _cluster_plan
        ctx.checkpoint_config = config
        ctx.execution_options.preserve_order = False
        ctx.enable_progress_bars = tty
        ctx.print_on_execution_start = tty
        # blocks of one batch each (a streaming repartition), so that every actor gets work
        # and a failure loses at most the batches in flight
        ds = _read(ray, job.input, fmt, files, has_ids, job).repartition(
            target_num_rows_per_block=job.batch_size
        )
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
            "ray: %s -> %s, actors %d..%d (%s each), checkpoint %s",
            job.input,
            job.output,
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
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    total = _output_rows(job.output)
    return {
        "engine": "ray",
        "rows_written": total - done_before,
        "rows_skipped": done_before,
        "rows_total": total,
        "seconds": seconds,
        "output": job.output,
        "checkpoint_dir": job.checkpoint_dir,
    }


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
    )


def embed_corpus_ray(**options: Any) -> dict[str, Any]:
    """Embed a corpus on Ray Data; the entry point of `qexport embed --engine ray`.

    Keyword options: artifact, input, output, instruction, dim, max_batch_tokens, id_column,
    text_column, address (None: a local Ray; "auto"; "ray://HOST:PORT"), actors ("N" or
    "MIN:MAX"), gpus_per_actor, batch_size (rows per actor call), checkpoint_dir (default
    OUTPUT.ray-checkpoint).

    OUTPUT is a folder of parquet files (`id` string, `embedding` list<float32>), one row per
    input id. Started again with the same OUTPUT and checkpoint folder, it writes only the ids
    that are missing. Returns stats: rows written by this run, rows skipped as already done,
    rows in the output, seconds."""
    return run_job(make_job(**options))
