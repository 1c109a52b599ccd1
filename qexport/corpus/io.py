"""Corpus readers and writers.

Inputs (records in file order, each an (id, text) pair):
- `.txt`: one text per line; the id is the line number (1-based).
- `.jsonl`: one JSON object per line with a text field; the id field is optional (the line
  number when absent). Blank lines are skipped.
- `.parquet`: a text column and an optional id column (the 1-based row number when absent).

Outputs: `.npy` float32 [n, dim] in input order, or `.parquet` with columns `id` (string) and
`embedding` (list<float32>), one row per input record, in input order.

Ids are strings of any length and content a JSON string can hold (the empty string and NUL
included), except unpaired surrogates, which no UTF-8 file can store: those, in an id or a
text, are refused by `scan_ids` before any work, naming the record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")
OUTPUT_SUFFIXES = (".npy", ".parquet")
PYARROW_HINT = 'reading or writing parquet needs pyarrow: pip install "qexport[corpus]"'


class CorpusError(ValueError):
    """A problem with the input corpus or the output path, named in one line."""


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


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise CorpusError(
            f"input {str(path)!r}: unsupported type {suffix or '(none)'!r}; "
            f"use one of {', '.join(INPUT_SUFFIXES)}"
        )
    if not path.is_file():
        raise CorpusError(f"input {str(path)!r} does not exist")
    return suffix[1:]


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise CorpusError(
            f"output {str(path)!r}: unsupported type {suffix or '(none)'!r}; "
            f"use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    if path.is_dir():
        raise CorpusError(f"output {str(path)!r} is a directory; name a file")
    return suffix[1:]


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


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CorpusError(PYARROW_HINT) from exc
    return pa, pq


def _id_value(value: Any, where: str, id_column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(
            f"{where}: id field {id_column!r} is {type(value).__name__}; use a string or integer"
        )
    return str(value)


def _text_value(value: Any, where: str, text_column: str) -> str:
    if not isinstance(value, str):
        what = "missing" if value is None else f"{type(value).__name__}, not a string"
        raise CorpusError(f"{where}: text field {text_column!r} is {what}")
    return value


def _txt(path: Path) -> Iterator[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                yield str(lineno), line.rstrip("\n")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _jsonl(path: Path, id_column: str, text_column: str) -> Iterator[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{where}: invalid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                if text_column not in obj:
                    raise CorpusError(f"{where}: no text field {text_column!r}")
                text = _text_value(obj[text_column], where, text_column)
                raw_id = obj.get(id_column)
                rid = str(lineno) if raw_id is None else _id_value(raw_id, where, id_column)
                yield rid, text
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _parquet(path: Path, id_column: str, text_column: str) -> Iterator[tuple[str, str]]:
    _, pq = _pyarrow()
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_column not in names:
        raise CorpusError(f"{path}: no text column {text_column!r} (columns: {', '.join(names)})")
    has_id = id_column in names
    columns = [text_column, id_column] if has_id else [text_column]
    row = 0
    for batch in pf.iter_batches(batch_size=8192, columns=columns):
        texts = batch.column(text_column).to_pylist()
        ids = batch.column(id_column).to_pylist() if has_id else [None] * len(texts)
        for text, raw_id in zip(texts, ids, strict=True):
            row += 1
            where = f"{path}: row {row}"
            text = _text_value(text, where, text_column)
            if has_id and raw_id is None:
                raise CorpusError(f"{where}: id column {id_column!r} is null")
            rid = str(row) if raw_id is None else _id_value(raw_id, where, id_column)
            yield rid, text


def iter_records(
    path: str | Path, id_column: str = "id", text_column: str = "text"
) -> Iterator[tuple[str, str]]:
    """(id, text) for every record, in file order."""
    path = Path(path)
    fmt = input_format(path)
    if fmt == "txt":
        return _txt(path)
    if fmt == "jsonl":
        return _jsonl(path, id_column, text_column)
    return _parquet(path, id_column, text_column)


def scan_ids(path: str | Path, id_column: str = "id", text_column: str = "text") -> list[str]:
    """Read the whole input once: check every record and that ids are unique; return ids in
    input order. Runs before any work so that a bad record fails the job up front."""
    ids: list[str] = []
    seen: set[str] = set()
    for rid, text in iter_records(path, id_column, text_column):
        _check_encodable(path, len(ids) + 1, rid, text)
        if rid in seen:
            raise CorpusError(
                f"{path}: id {rid!r} appears more than once (record {len(ids) + 1}); "
                "ids must be unique"
            )
        seen.add(rid)
        ids.append(rid)
    if not ids:
        raise CorpusError(f"{path}: no records")
    return ids


def _check_encodable(path: str | Path, record: int, rid: str, text: str) -> None:
    for what, value in (("id", rid), ("text", text)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise CorpusError(
                f"{path}: record {record} (id {rid!r}): the {what} holds an unpaired surrogate "
                f"U+{ord(bad):04X} at position {exc.start}, which is not valid Unicode text"
            ) from None


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def embedding_table(ids: list[str], vectors: np.ndarray) -> Any:
    """An arrow table with `id` (string) and `embedding` (list<float32>)."""
    pa, _ = _pyarrow()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    emb = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), type=pa.float32()))
    return pa.table({"id": pa.array(ids, type=pa.string()), "embedding": emb})


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
    pa, pq = _pyarrow()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32()))])
    with pq.ParquetWriter(tmp, schema) as writer:
        for ids, vectors in tables:
            writer.write_table(embedding_table(ids, vectors))
    _replace_atomically(tmp, final)
