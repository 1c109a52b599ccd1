"""The record layer (`qexport.corpus.io`): the four readers of texts (the local engine, the
Ray engine's numbering datasource, `qexport validate --texts`, `--calibration`) read the same
records and refuse hostile input with the same one-line error, while reading."""

from __future__ import annotations

import io
import json

import pytest

from qexport.commands.errors import UsageError
from qexport.commands.validate import read_texts as validate_texts
from qexport.corpus import io as records_io
from qexport.corpus.io import CorpusError, iter_records, lines, read_texts
from qexport.corpus.ray_input import _numbered_blocks, count_records
from qexport.export.quantize.calibration import CalibrationError, load_texts

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _ray_records(path, fmt, text_column="text"):
    """(id, text) as the Ray engine's numbering datasource yields them (no Ray needed)."""
    out = []
    for block in _numbered_blocks(str(path), str(path), "", fmt, "id", text_column):
        out.extend(zip(block["id"].to_pylist(), block[text_column].to_pylist(), strict=True))
    return out


class CountingStream(io.StringIO):
    """A text stream that counts the characters handed out."""

    served = 0

    def readline(self, size=-1):
        line = super().readline(size)
        self.served += len(line)
        return line


def test_a_long_line_is_refused_before_it_is_read_whole():
    stream = CountingStream("short\n" + "x" * 100_000 + "\nnever reached\n")
    got = []
    with pytest.raises(CorpusError, match=r"^f\.txt:2: line longer than 100 characters"):
        for record in lines(stream, "f.txt", limit=100):
            got.append(record)
    assert got == [(1, "short")]
    assert stream.served <= len("short\n") + 101


def test_a_line_of_exactly_the_limit_passes():
    assert list(lines(io.StringIO("abc\nde"), "f", limit=3)) == [(1, "abc"), (2, "de")]


def test_numbering_is_the_same_in_both_engines(tmp_path):
    """Ids of records without one: 1-based line (row) numbers, blank .txt lines included,
    blank .jsonl lines skipped but counted."""
    texts = ["first", "", "third ✓"]
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(texts) + "\n", encoding="utf-8")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": texts}), parquet, row_group_size=2)
    assert list(iter_records(txt)) == [("1", "first"), ("2", ""), ("3", "third ✓")]
    assert list(iter_records(jsonl)) == [("1", "a"), ("3", "b")]
    assert list(iter_records(parquet)) == list(iter_records(txt))
    for path in (txt, jsonl, parquet):
        fmt = path.suffix[1:]
        assert _ray_records(path, fmt) == list(iter_records(path)), path
        assert count_records(fmt, [str(path)], str(path)) == len(list(iter_records(path)))


def _reject_everywhere(path, fmt, needle):
    """Each of the four readers refuses `path` with one line holding `needle`."""
    errors = []
    for reader, kind in (
        (lambda: list(iter_records(path)), CorpusError),
        (lambda: _ray_records(path, fmt), CorpusError),
        (lambda: validate_texts(str(path)), UsageError),
        (lambda: load_texts(path), CalibrationError),
    ):
        with pytest.raises(kind) as info:
            reader()
        errors.append(str(info.value))
    for message in errors:
        assert needle in message and len(message.splitlines()) == 1, errors
    return errors


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "deep.jsonl:1: invalid JSON (nested"),
        (
            "big.jsonl",
            '{"text": "a", "n": 1' + "0" * 5000 + "}\n",
            "big.jsonl:1: invalid JSON (Exceeds",
        ),
        ("list.jsonl", '{"text": "ok"}\n[1, 2]\n', "list.jsonl:2: expected a JSON object"),
        ("num.jsonl", '{"text": 5}\n', "num.jsonl:1: text field 'text' is int, not a string"),
        ("none.jsonl", '{"body": "a"}\n', "none.jsonl:1: no text field 'text'"),
        ("sur.jsonl", '{"text": "a\\ud800"}\n', "sur.jsonl:1 (id '1'): the text holds an unpaired"),
    ],
)
def test_bad_json_lines_are_refused_alike(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    _reject_everywhere(path, "jsonl", needle)


def test_bytes_that_are_not_utf8_are_refused_alike(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\ncaf\xe9\n")
    _reject_everywhere(path, "txt", "latin1.txt: not UTF-8 text")


def test_record_limit_holds_in_every_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(records_io, "MAX_RECORD_CHARS", 50)
    txt = tmp_path / "long.txt"
    txt.write_text("ok\n" + "y" * 51 + "\n", encoding="utf-8")
    _reject_everywhere(txt, "txt", "long.txt:2: line longer than 50 characters")
    parquet = tmp_path / "long.parquet"
    pq.write_table(pa.table({"text": ["ok", "z" * 51]}), parquet)
    _reject_everywhere(parquet, "parquet", "long.parquet: row 2: text longer than 50 characters")


def test_read_texts_formats(tmp_path):
    lines_file = tmp_path / "calib.text"  # any other suffix: one text per line
    lines_file.write_text('a\n\n  \nb ✓\n{"text": 1}\n', encoding="utf-8")
    assert read_texts(lines_file, "texts file") == ["a", "b ✓", '{"text": 1}']
    jsonl = tmp_path / "t.JSONL"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["x", "", "z"]))
    assert read_texts(jsonl, "texts file") == ["x", "", "z"]  # only blank lines are skipped
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": ["p", "q"]}), parquet)
    assert read_texts(parquet, "texts file") == ["p", "q"]
    assert validate_texts(str(jsonl)) == load_texts(jsonl) == ["x", "", "z"]


def test_missing_or_empty_texts_file(tmp_path):
    with pytest.raises(CorpusError, match=r"^calibration file '.*nope.txt' does not exist$"):
        read_texts(tmp_path / "nope.txt", "calibration file")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UsageError, match=r"^texts file '.*empty.jsonl' has no texts$"):
        validate_texts(str(empty))
