"""The Ray engine's checkpoint, checked against its output before and after a run.

Ray Data's checkpoint (`CheckpointConfig`) records the ids of each finished write task in a
committed `<write uuid>_<task>.parquet` file (a `.pending.parquet` one while the task runs, whose
data files the next run deletes); a run skips every committed id. Ray trusts the checkpoint:
with OUTPUT deleted or some of its files removed, a rerun skips ids that no file holds. So,
before a run (`reconcile`):

- the output's ids are read (the `id` column only; data files of pending checkpoints left out,
  Ray deletes those) and must be unique;
- every committed checkpoint file is cut down to the ids that OUTPUT holds (deleted when none
  are left), with a one-line notice: those ids are computed again, the others are not;
- OUTPUT may hold no row that the checkpoint does not record (a run would write it twice):
  refused, naming both folders.
After the run (`verify_output`) OUTPUT must hold every input record exactly once.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from .ray_input import _files, _fs

log = logging.getLogger("qexport")

PENDING_SUFFIX = ".pending.parquet"  # ray.data.checkpoint.checkpoint_writer's name for them
TMP_SUFFIX = ".parquet.qexport"  # `_rewrite`'s temp files: `.<checkpoint file>.qexport`


def _read_ids(fs: Any, files: list[str], column: str = "id") -> Any:
    """The `column` of these parquet files as one string array."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    arrays = [
        pc.cast(pq.read_table(f, columns=[column], filesystem=fs)[column], pa.string())
        for f in files
    ]
    chunks = [c for a in arrays for c in a.chunks]
    return pa.chunked_array(chunks, type=pa.string()).combine_chunks()


def _duplicate(ids: Any) -> tuple[str, int] | None:
    import pyarrow.compute as pc

    counts = pc.value_counts(ids)
    many = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(many) == 0:
        return None
    first = many[0].as_py()
    return first["values"], first["counts"]


def _checkpoint_files(checkpoint_uri: str) -> tuple[Any, list[str], list[str]]:
    """(file system, committed checkpoint files, prefixes of pending ones)."""
    fs, root = _fs(checkpoint_uri)
    files = [f for f in _files(fs, root) if f.endswith(".parquet")]
    committed = [f for f in files if not f.endswith(PENDING_SUFFIX)]
    pending = [posixpath.basename(f)[: -len(PENDING_SUFFIX)] for f in files if f not in committed]
    return fs, committed, pending


def output_ids(output_uri: str, skip_prefixes: tuple[str, ...] = ()) -> Any:
    """Ids in the output's parquet files (those whose name starts with a prefix in
    `skip_prefixes` left out)."""
    import pyarrow as pa

    fs, root = _fs(output_uri)
    files = [
        f
        for f in _files(fs, root)
        if f.endswith(".parquet") and not posixpath.basename(f).startswith(skip_prefixes)
    ]
    return _read_ids(fs, files) if files else pa.array([], type=pa.string())


def _rewrite(fs: Any, path: str, ids: Any) -> None:
    """Replace a checkpoint file with one that holds `ids` (temp name, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = posixpath.join(posixpath.dirname(path), "." + posixpath.basename(path) + ".qexport")
    assert tmp.endswith(TMP_SUFFIX)
    pq.write_table(pa.table({"id": ids}), tmp, filesystem=fs)
    fs.move(tmp, path)


def _remove_rewrite_temps(fs: Any, root: str) -> None:
    """Temp files of a `_rewrite` cut short by a kill (Ray's checkpoint loader would count
    them as files)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    for entry in fs.get_file_info(pafs.FileSelector(root)):
        name = posixpath.basename(entry.path)
        if entry.type == pafs.FileType.File and name.startswith(".") and name.endswith(TMP_SUFFIX):
            fs.delete_file(entry.path)


def reconcile(output_uri: str, checkpoint_uri: str) -> int:
    """Make the checkpoint record exactly the ids that the output holds; return how many."""
    import pyarrow as pa
    import pyarrow.compute as pc

    fs, committed, pending = _checkpoint_files(checkpoint_uri)
    _remove_rewrite_temps(fs, _fs(checkpoint_uri)[1])
    present = output_ids(output_uri, tuple(pending))
    dup = _duplicate(present)
    if dup is not None:
        raise ValueError(
            f"output {output_uri} holds id {dup[0]!r} {dup[1]} times: it was not written by "
            "one run of this engine; use a new output (and checkpoint) folder"
        )
    kept: list[Any] = []
    dropped = 0
    for path in committed:
        ids = _read_ids(fs, [path])
        mask = pc.is_in(ids, value_set=present)
        keep = ids.filter(mask)
        if len(keep) < len(ids):
            dropped += len(ids) - len(keep)
            if len(keep):
                _rewrite(fs, path, keep)
            else:
                fs.delete_file(path)
        kept.append(keep)
    done = pa.concat_arrays(kept) if kept else pa.array([], type=pa.string())
    extra = present.filter(pc.invert(pc.is_in(present, value_set=done)))
    if len(extra):
        raise ValueError(
            f"output {output_uri} holds {len(extra)} rows that the checkpoint folder "
            f"{checkpoint_uri} does not record (e.g. id {extra[0].as_py()!r}); a run would "
            "write them again: pass the checkpoint folder of the run that wrote them "
            "(--checkpoint-dir), or use a new output folder"
        )
    if dropped:
        log.warning(
            "checkpoint %s recorded %d ids that %s does not hold (output deleted or files "
            "removed): dropped from the checkpoint, they are computed again",
            checkpoint_uri,
            dropped,
            output_uri,
        )
    return len(present)


def verify_output(output_uri: str, records: int) -> int:
    """Check that the output holds `records` rows with unique ids; return the row count."""
    ids = output_ids(output_uri)
    dup = _duplicate(ids)
    if dup is not None:
        raise ValueError(
            f"output {output_uri} holds id {dup[0]!r} {dup[1]} times: ids in the input must "
            "be unique"
        )
    if len(ids) != records:
        raise RuntimeError(
            f"output {output_uri} holds {len(ids)} rows but the input has {records} records; "
            "run the same command again to complete it"
        )
    return len(ids)
