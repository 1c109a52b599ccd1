"""`qexport embed` refuses an output that would replace its input (issue 27, item 4): the same
path, a hard link or symlink to it, a folder around it; exit 2 with one line, the input byte for
byte untouched, nothing written. Run as a real `qexport` process, both engines' checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qexport.corpus.io import CorpusError, check_output_not_input
from qexport.corpus.ray_job import make_job

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corpus(folder: Path) -> Path:
    src = folder / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["first text", "second text"]}), src)
    return src


def _embed(artifact: Path, src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "qexport.cli", "-q", "embed", str(artifact), str(src)]
    argv += ["-o", str(out), "--device", "cpu", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink", "dotted"])
def test_output_that_is_the_input_is_refused(tiny_artifact, tmp_path, how):
    src = _corpus(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    digest = _digest(src)
    out = src
    if how == "hardlink":
        out = tmp_path / "link.parquet"
        os.link(src, out)
    elif how == "symlink":
        out = tmp_path / "sym.parquet"
        out.symlink_to(src)
    elif how == "dotted":
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "c.parquet"
    before = sorted(p.name for p in tmp_path.iterdir())
    r = _embed(tiny_artifact, src, out, "--overwrite")
    assert r.returncode == 2, r.stderr
    assert "is the input" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _digest(src) == digest  # the corpus is untouched
    assert pq.read_table(src).column_names == ["id", "text"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside it


def test_a_distinct_output_still_works(tiny_artifact, tmp_path):
    src = _corpus(tmp_path)
    r = _embed(tiny_artifact, src, tmp_path / "out.parquet")
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2


def test_folders_that_contain_one_another_are_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    src = _corpus(folder)
    with pytest.raises(CorpusError, match="contain one another"):
        check_output_not_input(src, folder)  # the output folder holds the input
    with pytest.raises(CorpusError, match="contain one another"):
        check_output_not_input(folder, folder / "out.parquet")  # inside an input folder


def test_ray_engine_refuses_its_input_as_output(tmp_path):
    src = _corpus(tmp_path)
    with pytest.raises(CorpusError, match="is the input"):
        make_job(artifact=tmp_path, input=src, output=src)
    with pytest.raises(CorpusError, match="is the input"):
        make_job(artifact=tmp_path, input="s3://b/c.parquet", output="s3://b/c.parquet/")
