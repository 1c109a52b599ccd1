"""The output contract of both engines: the `(id, embedding)` table, the writers, the summary.

- `.npy`: float32 [n, dim] in input order (local engine only).
- `.parquet`: columns `id` (string) and `embedding` (list<float32>), one row per input record:
  one file in input order (local engine), a folder of files in no particular order (Ray
  engine, each actor's batch built by `embedding_table` too).
Files are written to a temp name next to OUTPUT and renamed (`.OUT.tmp-PID`); what a killed
run leaves there is removed by the next one (`remove_stale`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import CorpusError, pyarrow_modules, suffix_format

OUTPUT_SUFFIXES = (".npy", ".parquet")


@dataclass(frozen=True)
class EmbedSummary:
    """What one `qexport embed` run did (both engines): `written + resumed == rows`, the
    number of input records; `resumed` rows were already done by an earlier run."""

    rows: int
    written: int
    resumed: int
    dim: int | None
    seconds: float
    output: str
    engine: str = "local"
    checkpoint_dir: str | None = None

    def line(self) -> str:
        rate = self.written / max(self.seconds, 1e-9)
        resumed = f", {self.resumed} already done" if self.resumed else ""
        dim = f"dim {self.dim}, " if self.dim else ""
        return (
            f"embedded {self.rows} texts ({self.written} written{resumed}) -> {self.output} "
            f"({dim}{self.engine} engine) in {self.seconds:.1f} s ({rate:.1f} texts/s)"
        )


def output_format(path: Path) -> str:
    """npy or parquet, from OUTPUT's suffix; a folder is refused (name a file)."""
    fmt = suffix_format(path, "output", OUTPUT_SUFFIXES)
    if path.is_dir():
        raise CorpusError(f"output {str(path)!r} is a directory; name a file")
    return fmt


def embedding_table(ids: Sequence[str] | Any, vectors: np.ndarray) -> Any:
    """An arrow table with `id` (string) and `embedding` (list<float32>); `ids` a list of
    strings or an arrow string array."""
    pa, _ = pyarrow_modules()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    emb = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), type=pa.float32()))
    id_array = ids if isinstance(ids, pa.Array) else pa.array(ids, type=pa.string())
    return pa.table({"id": id_array, "embedding": emb})


def _stale_pid(name: str, output: Path) -> int | None:
    """The pid in `.OUT.tmp-PID` / `.OUT.parts.done-PID` (our temp output and our finished
    parts folder being removed), None for any other name."""
    pattern = rf"\.{re.escape(output.name)}\.(?:tmp|parts\.done)-([0-9]+)"
    match = re.fullmatch(pattern, name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had this pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another account has that pid
        return True
    return True


def remove_stale(output: Path) -> list[Path]:
    """Remove what a killed run on `output` left next to it: the merge's temp file
    `.OUT.tmp-PID` and a finished parts folder `.OUT.parts.done-PID` whose deletion was cut
    short. Only these exact names, and only when process PID is gone."""
    removed: list[Path] = []
    if not output.parent.is_dir():
        return removed
    for entry in output.parent.iterdir():
        pid = _stale_pid(entry.name, output)
        if pid is None or _alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def write_npy(final: Path, n: int, dim: int, blocks: Iterator[tuple[int, np.ndarray]]) -> None:
    """Write float32 [n, dim] from (first row, block) pieces; atomic (temp file + rename)."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    for start, block in blocks:
        out[start : start + len(block)] = block
    out.flush()
    del out
    _replace_atomically(tmp, final)


def write_parquet(final: Path, tables: Iterator[tuple[list[str], np.ndarray]]) -> None:
    """Write (ids, vectors) pieces in order to one parquet file; atomic (temp file + rename)."""
    pa, pq = pyarrow_modules()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    with pq.ParquetWriter(tmp, schema) as writer:
        for ids, vectors in tables:
            writer.write_table(embedding_table(ids, vectors))
    _replace_atomically(tmp, final)
