"""Input side of the Ray engine: paths and file systems, the input's format and columns, a
datasource that numbers records without ids, and the input's record count (checked against
the output after the run). Records are read, numbered and checked by the record layer
(`io`), the same code as the local engine's, on any pyarrow file system.

`ray` is imported only inside functions."""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from .io import FORMATS, json_object, lines, records

LINES_PER_BLOCK = 4096


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


def input_files(uri: str) -> tuple[str, list[str]]:
    """(format, files) of INPUT: one .parquet/.jsonl/.txt file, or a folder of one kind (the
    format named by the suffix, as `io.FORMATS` names it for the local engine)."""
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


@contextmanager
def _open(fs: Any, path: str, fmt: str) -> Iterator[Any]:
    """An input file on `fs` as the record layer reads it: a text stream, or a ParquetFile."""
    import pyarrow.parquet as pq

    if fmt == "parquet":
        with fs.open_input_file(path) as f:
            yield pq.ParquetFile(f)
    else:
        with fs.open_input_stream(path) as f:
            yield io.TextIOWrapper(f, encoding="utf-8")


def _jsonl_fields(fs: Any, path: str) -> set[str]:
    """Field names of the first JSON object in a .jsonl file."""
    with _open(fs, path, "jsonl") as stream:
        for n, line in lines(stream, path):
            if line.strip():
                return set(json_object(line, f"{path}:{n}"))
    return set()


def check_columns(fmt: str, files: list[str], uri: str, id_column: str, text_column: str) -> bool:
    """Check the text (and id) columns; return whether the input carries its own ids."""
    fs, _ = _fs(uri)
    if fmt == "txt":
        return False
    if fmt == "parquet":
        import pyarrow.parquet as pq

        names = set(pq.read_schema(files[0], filesystem=fs).names)
    else:
        names = _jsonl_fields(fs, files[0])
    if text_column not in names:
        raise ValueError(
            f"{files[0]} has no {text_column!r} column (columns: {sorted(names)}); "
            "set --text-column"
        )
    return id_column in names


def _numbered_blocks(
    uri: str, path: str, prefix: str, fmt: str, id_column: str, text_column: str
) -> Iterator[Any]:
    """Blocks of (id = prefix + 1-based record number, text) of one input file (`path` on the
    file system of INPUT `uri`), numbered and checked by the record layer (`io.records`) as
    the local engine numbers and checks them."""
    import pyarrow as pa

    ids: list[str] = []
    texts: list[str] = []
    with _open(_fs(uri)[0], path, fmt) as source:
        for rid, text in records(source, fmt, path, None, text_column, prefix):
            ids.append(rid)
            texts.append(text)
            if len(ids) == LINES_PER_BLOCK:
                yield pa.table({id_column: ids, text_column: texts})
                ids, texts = [], []
    if ids:
        yield pa.table({id_column: ids, text_column: texts})


def _numbered_source(files: list[str], fmt: str, uri: str, id_column: str, text_column: str) -> Any:
    """A Ray datasource for inputs without ids (.txt; .jsonl and .parquet without the id
    field): one read task per file; a row's id is its 1-based line (row) number, as the local
    engine numbers them (`file:line` when the input is a folder of several files). The id
    exists before Ray's checkpoint filter, which runs straight after the read; a read_text
    and a later map could not number the lines."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class NumberedDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
        ) -> list[Any]:
            tasks = []
            root = _fs(uri)[1]
            for path in files:
                prefix = "" if len(files) == 1 else posixpath.relpath(path, root) + ":"
                meta = BlockMetadata(
                    num_rows=None, size_bytes=None, input_files=(path,), exec_stats=None
                )
                tasks.append(
                    ReadTask(
                        partial(_numbered_blocks, uri, path, prefix, fmt, id_column, text_column),
                        meta,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
            return tasks

    return NumberedDatasource()


def read_input(
    ray: Any, uri: str, fmt: str, files: list[str], has_ids: bool, id_column: str, text_column: str
) -> Any:
    if fmt == "parquet" and has_ids:
        return ray.data.read_parquet(uri).select_columns([id_column, text_column])
    if fmt == "jsonl" and has_ids:
        return ray.data.read_json(uri, lines=True, file_extensions=["jsonl"])
    src = _numbered_source(files, fmt, uri, id_column, text_column)
    return ray.data.read_datasource(src)


def count_records(fmt: str, files: list[str], uri: str) -> int:
    """Records in the input, counted as the readers count them: parquet rows, .txt lines,
    non-blank .jsonl lines (each line within the record layer's limit)."""
    fs, _ = _fs(uri)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(fs.open_input_file(f)).metadata.num_rows for f in files)
    n = 0
    for path in files:
        with _open(fs, path, fmt) as stream:
            n += sum(1 for _, line in lines(stream, path) if fmt == "txt" or line.strip())
    return n
