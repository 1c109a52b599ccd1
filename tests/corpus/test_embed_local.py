"""`qexport embed` with the local engine: every input format and output format gives one row
per input id, in input order, equal to Embedder.embed; bad input exits 2 with one line; a real
`qexport embed` process killed mid-run resumes and writes every id exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from qexport.cli import main
from qexport.corpus.parts import decode_ids
from qexport.runtime import Embedder
from tests.texts import MIXED

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [*MIXED, "", "last line, ünïcode ✓"]


@pytest.fixture(scope="module")
def emb(tiny_artifact):
    return Embedder(tiny_artifact, device="cpu")


def _vectors(table):
    return np.array(table.column("embedding").to_pylist(), dtype=np.float32)


def test_txt_to_npy_in_input_order(tiny_artifact, emb, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    rc = main(["-q", "embed", str(tiny_artifact), str(src), "-o", str(out), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(got, emb.embed(TEXTS), atol=1e-5)
    assert f"embedded {len(TEXTS)} texts" in capsys.readouterr().out
    assert not (tmp_path / "out.npy.parts").exists()


def test_jsonl_to_parquet_with_ids_instruction_and_dim(tiny_artifact, emb, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"doc": f"d{i}", "body": t} for i, t in enumerate(TEXTS)]
    rows[3] = {"body": TEXTS[3]}  # no id: the line number
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    task = "Given a web search query, retrieve relevant passages that answer the query"
    argv = ["-q", "embed", str(tiny_artifact), str(src), "-o", str(out), "--device", "cpu"]
    argv += ["--id-column", "doc", "--text-column", "body", "--instruction", task, "--dim", "64"]
    argv += ["--chunk-rows", "3", "--max-batch-tokens", "128"]
    assert main(argv) == 0
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    want_ids = [f"d{i}" for i in range(len(TEXTS))]
    want_ids[3] = "4"
    assert table.column("id").to_pylist() == want_ids
    np.testing.assert_allclose(
        _vectors(table), emb.embed(TEXTS, instruction=task, dim=64), atol=1e-5
    )


def test_parquet_to_parquet(tiny_artifact, emb, tmp_path):
    src = tmp_path / "in.parquet"
    ids = [1000 + i for i in range(len(TEXTS))]
    pq.write_table(pa.table({"id": ids, "text": TEXTS}), src, row_group_size=4)
    out = tmp_path / "out.parquet"
    argv = ["-q", "embed", str(tiny_artifact), str(src), "-o", str(out), "--device", "cpu"]
    assert main([*argv, "--chunk-rows", "4"]) == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [str(i) for i in ids]
    np.testing.assert_allclose(_vectors(table), emb.embed(TEXTS), atol=1e-5)
    # an existing output is not replaced by accident
    assert main(argv) == 2
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("name", "content", "extra", "message"),
    [
        ("dup.jsonl", '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', [], "appears more"),
        ("notext.jsonl", '{"id": 1, "body": "a"}\n', [], "no text field 'text'"),
        ("badtext.jsonl", '{"id": 1, "text": 5}\n', [], "text field 'text' is int"),
        ("broken.jsonl", '{"id": 1, "text": "a"\n', [], r"broken.jsonl:1: invalid JSON"),
        ("in.csv", "a,b\n", [], "unsupported type '.csv'"),
        ("empty.txt", "", [], "no records"),
        ("ok.txt", "a\n", ["--dim", "100"], "dim 100 is not allowed"),
        ("ok.txt", "a\n", ["--actors", "2"], "only apply to --engine ray"),
        ("ok.txt", "a\n", ["--actors", "3:2"], "MIN:MAX with 1 <= MIN <= MAX, got '3:2'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tiny_artifact, tmp_path, capsys, name, content, extra, message
):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    argv = ["-q", "embed", str(tiny_artifact), str(src), "-o", str(tmp_path / "o.npy")]
    assert main([*argv, "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_output_type(tiny_artifact, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a\n", encoding="utf-8")
    assert main(["embed", str(tiny_artifact), str(src), "-o", str(tmp_path / "o.csv")]) == 2
    assert "unsupported type '.csv'" in capsys.readouterr().err


def test_engine_ray_without_ray(tiny_artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    src = tmp_path / "in.txt"
    src.write_text("a\n", encoding="utf-8")
    argv = ["embed", str(tiny_artifact), str(src), "-o", str(tmp_path / "o.parquet")]
    assert main([*argv, "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--engine ray needs the 'ray' extra: pip install \"qexport[ray]\"")


def _parts_rows(parts_dir):
    rows = []
    for path in sorted(parts_dir.glob("part-*.npz")):
        with np.load(path) as data:
            rows.extend(decode_ids(data["ids_utf8"], data["id_offsets"]))
    return rows


@pytest.mark.slow
def test_killed_run_resumes_exactly_once(tiny_artifact, emb, tmp_path):
    n = 240
    texts = [
        f"document {i}: " + " ".join(f"w{(i * 7 + j) % 101}" for j in range(40 + i % 60))
        for i in range(n)
    ]
    src = tmp_path / "corpus.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    out = tmp_path / "vectors.parquet"
    parts = tmp_path / "vectors.parquet.parts"
    cmd = [sys.executable, "-m", "qexport.cli", "embed", str(tiny_artifact), str(src)]
    cmd += ["-o", str(out), "--device", "cpu", "--chunk-rows", "8", "--max-batch-tokens", "256"]
    env = {**os.environ, "QEXPORT_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.npz"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no parts committed in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    committed = _parts_rows(parts)
    assert 16 <= len(committed) < n  # killed mid-run, after whole parts only

    # a restart with other arguments is refused and leaves the parts alone
    other = subprocess.run([*cmd, "--dim", "32"], env=env, capture_output=True, text=True)
    assert other.returncode == 2 and "different arguments" in other.stderr, other.stderr
    assert _parts_rows(parts) == committed

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(committed)} of {n} rows already committed" in again.stderr
    assert (
        f"embedded {n} texts ({n - len(committed)} written, {len(committed)} already done)"
        in again.stdout
    )
    assert not parts.exists()
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert ids == [f"doc-{i}" for i in range(n)]  # every id exactly once, input order
    np.testing.assert_allclose(_vectors(table), emb.embed(texts), atol=1e-5)
