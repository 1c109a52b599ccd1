"""The record layer: every text file qexport reads (a corpus for either engine, the validator's
`--texts`, quantization's `--calibration`) goes through these readers, with the same limits
and the same errors (`CorpusError`, one line naming the file, the line or row, and the problem).

Inputs (records in file order, each an (id, text) pair):
- `.txt`: one text per line; the id is the line number (1-based).
- `.jsonl`: one JSON object per line with a text field; the id field is optional (the line
  number when absent). Blank lines are skipped.
- `.parquet`: a text column and an optional id column (the 1-based row number when absent).

Texts are hostile input: a line (a record of .txt / .jsonl) is read at most
`MAX_RECORD_CHARS` characters at a time and refused past that, before the rest of it is read;
a parquet text is held to the same length. JSON nested past the parser's recursion limit
and unpaired surrogates (a JSON "\\ud800", which no UTF-8 file can store) are refused naming
the line, bytes that are not UTF-8 naming the last good line before them. Ids are strings
of any length and content a JSON string can hold (the empty string and NUL included) within
that limit.

The readers take an open stream (or a `pyarrow.parquet.ParquetFile`), so the Ray engine's
numbering datasource reads object-store files with the same code (`records`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ..util import require

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
INPUT_SUFFIXES = tuple(FORMATS)
MAX_RECORD_CHARS = 16 << 20  # characters in one line (or parquet text) at most
PARQUET_BATCH_ROWS = 8192


class CorpusError(ValueError):
    """A problem with the input corpus or the output path, named in one line."""


def suffix_format(path: str | Path, role: str, suffixes: tuple[str, ...]) -> str:
    """The format named by `path`'s suffix (one of `suffixes`), or a CorpusError."""
    suffix = PurePosixPath(str(path)).suffix.lower()
    if suffix not in suffixes:
        raise CorpusError(
            f"{role} {str(path)!r}: unsupported type {suffix or '(none)'!r}; "
            f"use one of {', '.join(suffixes)}"
        )
    return suffix[1:]


def input_format(path: Path) -> str:
    """The format of an input file: txt, jsonl or parquet (it must exist)."""
    fmt = suffix_format(path, "input", INPUT_SUFFIXES)
    if not path.is_file():
        raise CorpusError(f"input {str(path)!r} does not exist")
    return fmt


def check_output_not_input(input: str | Path, output: str | Path) -> None:
    """Refuse an output that would replace the input: the same path or file (a hard link, a
    symlink), a folder holding the input, or a path inside an input folder. Checked before any
    work, so the input is never touched."""
    src, dst = Path(os.path.abspath(input)), Path(os.path.abspath(output))
    same = src.resolve() == dst.resolve()
    if not same and src.exists() and dst.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(src, dst)
    if same:
        raise CorpusError(f"output {str(output)!r} is the input: write the embeddings elsewhere")
    src_r, dst_r = src.resolve(), dst.resolve()
    if src_r.is_relative_to(dst_r) or dst_r.is_relative_to(src_r):
        raise CorpusError(
            f"output {str(output)!r} and input {str(input)!r} contain one another: "
            "write the embeddings elsewhere"
        )


def pyarrow_modules() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or a CorpusError naming the extra that brings them."""
    try:
        what = "reading or writing parquet"
        return require("pyarrow", what, "corpus"), require("pyarrow.parquet", what, "corpus")
    except ImportError as exc:
        raise CorpusError(str(exc)) from exc


# ---------------------------------------------------------------- lines and JSON


def lines(stream: IO[str], where: str, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) of a text stream; a line longer than
    `limit` characters (default MAX_RECORD_CHARS) is refused as soon as that many are read."""
    limit = MAX_RECORD_CHARS if limit is None else limit
    lineno = 0
    try:
        while line := stream.readline(limit + 1):
            lineno += 1
            text = line[:-1] if line.endswith("\n") else line
            if len(text) > limit:
                raise CorpusError(
                    f"{where}:{lineno}: line longer than {limit} characters "
                    "(the limit of one record)"
                )
            yield lineno, text
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{where}: not UTF-8 text after line {lineno} ({exc.reason})") from exc


def json_object(line: str, where: str) -> dict[str, Any]:
    """One .jsonl line as a JSON object, or a CorpusError naming `where`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{where}: invalid JSON ({exc.msg})") from exc
    except ValueError as exc:  # an integer of more digits than int() converts
        raise CorpusError(f"{where}: invalid JSON ({str(exc).split(':')[0]})") from exc
    except RecursionError:
        raise CorpusError(f"{where}: invalid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- records


def _id_value(value: Any, where: str, id_column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(
            f"{where}: id field {id_column!r} is {type(value).__name__}; use a string or integer"
        )
    return str(value)


def _checked(where: str, rid: str, text: Any, text_column: str) -> tuple[str, str]:
    """(rid, text) once the text is a string within the limit and both are valid Unicode."""
    if not isinstance(text, str):
        what = "missing" if text is None else f"{type(text).__name__}, not a string"
        raise CorpusError(f"{where}: text field {text_column!r} is {what}")
    if len(text) > MAX_RECORD_CHARS:
        raise CorpusError(
            f"{where}: text longer than {MAX_RECORD_CHARS} characters (the limit of one record)"
        )
    for what, value in (("id", rid), ("text", text)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CorpusError(
                f"{where} (id {rid!r}): the {what} holds an unpaired surrogate "
                f"U+{ord(value[exc.start]):04X} at position {exc.start}, which is not valid "
                "Unicode text"
            ) from None
    return rid, text


def _txt(stream: IO[str], where: str, prefix: str) -> Iterator[tuple[str, str]]:
    for lineno, line in lines(stream, where):
        yield f"{prefix}{lineno}", line


def _jsonl(
    stream: IO[str], where: str, id_column: str | None, text_column: str, prefix: str
) -> Iterator[tuple[str, str]]:
    for lineno, line in lines(stream, where):
        if not line.strip():
            continue
        at = f"{where}:{lineno}"
        obj = json_object(line, at)
        if text_column not in obj:
            raise CorpusError(f"{at}: no text field {text_column!r}")
        raw_id = obj.get(id_column) if id_column is not None else None
        rid = f"{prefix}{lineno}" if raw_id is None else _id_value(raw_id, at, id_column or "")
        yield _checked(at, rid, obj[text_column], text_column)


def _parquet(
    pf: Any, where: str, id_column: str | None, text_column: str, prefix: str
) -> Iterator[tuple[str, str]]:
    names = pf.schema_arrow.names
    if text_column not in names:
        raise CorpusError(f"{where}: no text column {text_column!r} (columns: {', '.join(names)})")
    has_id = id_column is not None and id_column in names
    columns = [text_column, id_column] if has_id else [text_column]
    row = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        texts = batch.column(text_column).to_pylist()
        ids = batch.column(id_column).to_pylist() if has_id else [None] * len(texts)
        for text, raw_id in zip(texts, ids, strict=True):
            row += 1
            at = f"{where}: row {row}"
            if has_id and raw_id is None:
                raise CorpusError(f"{at}: id column {id_column!r} is null")
            rid = f"{prefix}{row}" if raw_id is None else _id_value(raw_id, at, id_column or "")
            yield _checked(at, rid, text, text_column)


def records(
    source: Any,
    fmt: str,
    where: str,
    id_column: str | None = "id",
    text_column: str = "text",
    prefix: str = "",
) -> Iterator[tuple[str, str]]:
    """(id, text) of every record of an open input, in order: `source` is a text stream
    (txt, jsonl) or a `pyarrow.parquet.ParquetFile`. A record without an id (or every record,
    with `id_column` None) gets `prefix` + its 1-based line (row) number."""
    if fmt == "txt":
        return _txt(source, where, prefix)
    if fmt == "jsonl":
        return _jsonl(source, where, id_column, text_column, prefix)
    return _parquet(source, where, id_column, text_column, prefix)


def _file_records(
    path: Path, fmt: str, id_column: str | None, text_column: str
) -> Iterator[tuple[str, str]]:
    if fmt == "parquet":
        pf = pyarrow_modules()[1].ParquetFile(path)
        yield from records(pf, fmt, str(path), id_column, text_column)
        return
    with open(path, encoding="utf-8") as fh:
        yield from records(fh, fmt, str(path), id_column, text_column)


def iter_records(
    path: str | Path, id_column: str = "id", text_column: str = "text"
) -> Iterator[tuple[str, str]]:
    """(id, text) for every record of an input file, in file order."""
    path = Path(path)
    return _file_records(path, input_format(path), id_column, text_column)


def scan_ids(path: str | Path, id_column: str = "id", text_column: str = "text") -> list[str]:
    """Read the whole input once: check every record and that ids are unique; return ids in
    input order. Runs before any work so that a bad record fails the job up front."""
    ids: list[str] = []
    seen: set[str] = set()
    for rid, _ in iter_records(path, id_column, text_column):
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


def read_texts(path: str | Path, what: str, text_column: str = "text") -> list[str]:
    """The texts of a texts file (no ids), in order: `.jsonl` (the text field of each object)
    or `.parquet` (the text column) as the corpus readers read them; a file of any other name
    holds one text per line. Blank lines are skipped. `what` names the file in errors."""
    p = Path(path)
    if not p.is_file():
        raise CorpusError(f"{what} {str(p)!r} does not exist")
    fmt = FORMATS.get(p.suffix.lower(), "txt")
    texts = [text for _, text in _file_records(p, fmt, None, text_column)]
    if fmt == "txt":
        texts = [text for text in texts if text.strip()]
    if not texts:
        raise CorpusError(f"{what} {str(p)!r} has no texts")
    return texts
