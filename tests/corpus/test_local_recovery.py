"""The local engine after a kill or a deletion: for every way its `OUTPUT.parts/` folder, its
temp files and OUTPUT can disagree, a rerun ends with every id exactly once, in input order,
with the vectors of `Embedder.embed`, or with exit 2 and one line naming the problem. Also:
un-encodable text, ids of any length and content, a folder as OUTPUT, the artifact checksums.

A kill at a part boundary is made by raising KeyboardInterrupt from `PartStore.commit` (or
`PartStore.remove`) in this process: the same state on disk as a SIGKILL there (parts are
written by rename; test_embed_local.py kills a real process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qexport.cli import main
from qexport.corpus.parts import PartStore
from qexport.runtime import Embedder

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N = 40
IDS = [f"doc-{i}" for i in range(N)]
TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(N)]


@pytest.fixture(scope="module")
def want(tiny_artifact):
    return Embedder(tiny_artifact, device="cpu").embed(TEXTS)


def _write_jsonl(path, ids, texts):
    path.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)),
        encoding="utf-8",
    )
    return path


def _argv(artifact, src, out, *extra):
    return ["-q", "embed", str(artifact), str(src), "-o", str(out), "--device", "cpu",
            "--chunk-rows", "8", *extra]  # fmt: skip


def _check(out, want, ids=IDS):
    """Every id exactly once, in input order, with the reference vectors."""
    if out.suffix == ".npy":
        np.testing.assert_allclose(np.load(out), want, atol=1e-5)
        return
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ids
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)


def _kill_at(monkeypatch, method, after):
    """Raise KeyboardInterrupt from PartStore.`method` once `after` calls went through."""
    real = getattr(PartStore, method)
    calls = {"n": 0}

    def wrapper(self, *args, **kwargs):
        if calls["n"] >= after:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PartStore, method, wrapper)


def _interrupted(monkeypatch, argv, method="commit", after=2):
    with monkeypatch.context() as m:
        _kill_at(m, method, after)
        assert main(argv) == 130  # the CLI's code for an interrupt


def _one_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_parts_without_output_resume(tiny_artifact, want, tmp_path, monkeypatch, capsys, suffix):
    """Killed after 2 parts, with a part's temp file left: the rerun resumes (16 rows done)."""
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / f"out{suffix}"
    parts = tmp_path / f"out{suffix}.parts"
    _interrupted(monkeypatch, _argv(tiny_artifact, src, out))
    assert not out.exists() and len(list(parts.glob("part-*.npz"))) == 2
    (parts / "part-000002.npz.tmp").write_bytes(b"half a part")
    capsys.readouterr()
    assert main(_argv(tiny_artifact, src, out)[1:]) == 0
    assert f"({N - 16} written, 16 already done)" in capsys.readouterr().out
    _check(out, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.jsonl", out.name])


def test_failure_before_any_part_leaves_nothing(tiny_artifact, tmp_path, monkeypatch):
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    _interrupted(monkeypatch, _argv(tiny_artifact, src, tmp_path / "out.npy"), after=0)
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_deleted_part_is_recomputed(tiny_artifact, want, tmp_path, monkeypatch, suffix):
    """The rows of a deleted part are embedded again, into a later part: the merge puts
    them back in input order."""
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / f"out{suffix}"
    _interrupted(monkeypatch, _argv(tiny_artifact, src, out), after=3)
    (tmp_path / f"out{suffix}.parts" / "part-000001.npz").unlink()
    assert main(_argv(tiny_artifact, src, out)) == 0
    _check(out, want)


def test_damaged_part_exits_2_naming_it(tiny_artifact, want, tmp_path, monkeypatch, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / "out.parquet"
    _interrupted(monkeypatch, _argv(tiny_artifact, src, out))
    part = tmp_path / "out.parquet.parts" / "part-000001.npz"
    part.write_bytes(part.read_bytes()[:100])
    capsys.readouterr()
    assert main(_argv(tiny_artifact, src, out)) == 2
    _one_line(capsys, "part-000001.npz cannot be read", "delete that file")
    assert part.exists() and not out.exists()  # nothing deleted for the user
    part.unlink()
    assert main(_argv(tiny_artifact, src, out)) == 0
    _check(out, want)


def test_parts_without_state_exit_2(tiny_artifact, tmp_path, monkeypatch, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / "out.npy"
    _interrupted(monkeypatch, _argv(tiny_artifact, src, out))
    (tmp_path / "out.npy.parts" / "state.json").unlink()
    capsys.readouterr()
    assert main(_argv(tiny_artifact, src, out)) == 2
    _one_line(capsys, "is not a resumable run (it holds parts but no state.json)")
    assert len(list((tmp_path / "out.npy.parts").glob("part-*.npz"))) == 2


def test_foreign_output_next_to_unfinished_parts(
    tiny_artifact, want, tmp_path, monkeypatch, capsys
):
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / "out.npy"
    _interrupted(monkeypatch, _argv(tiny_artifact, src, out))
    np.save(out, np.zeros((3, 3), dtype=np.float32))  # the user's file
    capsys.readouterr()
    assert main(_argv(tiny_artifact, src, out)) == 2
    _one_line(capsys, "exists but", "holds an unfinished run", "--overwrite")
    assert np.load(out).shape == (3, 3)
    assert main([*_argv(tiny_artifact, src, out), "--overwrite"]) == 0
    _check(out, want)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_killed_between_merge_and_cleanup(
    tiny_artifact, want, tmp_path, monkeypatch, capsys, suffix
):
    """OUTPUT written, parts folder still there: the rerun finds OUTPUT equal to the parts and
    finishes; an OUTPUT changed since is refused (or replaced with --overwrite)."""
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / f"out{suffix}"
    _interrupted(monkeypatch, _argv(tiny_artifact, src, out), method="remove", after=0)
    assert out.exists() and (tmp_path / f"out{suffix}.parts").is_dir()
    capsys.readouterr()
    assert main(_argv(tiny_artifact, src, out)[1:]) == 0
    assert f"(0 written, {N} already done)" in capsys.readouterr().out
    _check(out, want)
    assert not (tmp_path / f"out{suffix}.parts").exists()

    _interrupted(monkeypatch, [*_argv(tiny_artifact, src, out), "--overwrite"], "remove", 0)
    if suffix == ".npy":
        np.save(out, np.zeros_like(want))
    else:
        pq.write_table(pq.read_table(out).slice(0, N - 1), out)
    capsys.readouterr()
    assert main(_argv(tiny_artifact, src, out)) == 2
    _one_line(capsys, "exists and differs from the finished run")
    assert main([*_argv(tiny_artifact, src, out), "--overwrite"]) == 0
    _check(out, want)


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_stale_temp_files_of_dead_runs_are_removed(tiny_artifact, want, tmp_path):
    """A killed merge leaves `.OUT.tmp-PID`; a kill while the finished parts folder is being
    deleted leaves `.OUT.parts.done-PID`. Removed when PID is gone; anything else is kept."""
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    out = tmp_path / "out.npy"
    dead = _dead_pid()
    stale_tmp = tmp_path / f".out.npy.tmp-{dead}"
    stale_tmp.write_bytes(b"\x93NUMPY half written")
    stale_done = tmp_path / f".out.npy.parts.done-{dead}"
    stale_done.mkdir()
    (stale_done / "part-000000.npz").write_bytes(b"x")
    keep = [
        tmp_path / f".out.npy.tmp-{os.getppid()}",  # a live process's temp file
        tmp_path / f".out.npy.tmp-{dead}.bak",  # not our exact name
        tmp_path / ".out.npy.tmp-notapid",
        tmp_path / f".other.npy.tmp-{dead}",  # another output's
    ]
    for path in keep:
        path.write_text("user data")
    assert main(_argv(tiny_artifact, src, out)) == 0
    _check(out, want)
    assert not stale_tmp.exists() and not stale_done.exists()
    assert all(p.read_text() == "user data" for p in keep)


@pytest.mark.parametrize("name", ["out.npy", "out.parquet"])
def test_output_that_is_a_directory_exits_2_before_work(tiny_artifact, tmp_path, capsys, name):
    src = _write_jsonl(tmp_path / "in.jsonl", IDS, TEXTS)
    (tmp_path / name).mkdir()
    assert main(_argv(tiny_artifact, src, tmp_path / name)) == 2
    _one_line(capsys, f"{name}' is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", name]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"id": "1", "text": "a\\ud800b"}', "in.jsonl:2 (id '1'): the text holds an unpaired "
         "surrogate U+D800 at position 1"),
        ('{"id": "x\\udfff", "text": "ok"}', "in.jsonl:2 (id 'x\\udfff'): the id holds"),
    ],
)  # fmt: skip
def test_unencodable_text_exits_2_leaving_nothing(tiny_artifact, tmp_path, capsys, line, needle):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "0", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    assert main(_argv(tiny_artifact, src, tmp_path / "out.parquet")) == 2
    _one_line(capsys, needle)
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_ids_of_any_content_round_trip_and_resume(tiny_artifact, tmp_path, monkeypatch):
    """Ids ending in NUL (two ids that fixed-width numpy strings would merge), the empty
    string, unicode and a 20 KB id: written exactly, and resumable."""
    ids = ["a\x00", "a", "", "\x00", "ünï✓ 中", "x" * 20_000, *[f"n{i}" for i in range(10)]]
    texts = [f"text {i}" for i in range(len(ids))]
    want = Embedder(tiny_artifact, device="cpu").embed(texts)
    src = _write_jsonl(tmp_path / "in.jsonl", ids, texts)
    out = tmp_path / "out.parquet"
    argv = [*_argv(tiny_artifact, src, out)[:-2], "--chunk-rows", "3"]
    _interrupted(monkeypatch, argv, after=2)
    assert main(argv) == 0
    _check(out, want, ids)


def test_part_size_does_not_grow_with_the_longest_id(tmp_path):
    """1,000 rows with one 20 KB id: fixed-width numpy strings (<U20000) would make the part
    80 MB; variable-length storage keeps it near ids + vectors (~0.55 MB)."""
    ids = [f"id-{i}" for i in range(999)] + ["y" * 20_000]
    vectors = np.random.default_rng(0).standard_normal((1000, 128)).astype(np.float32)
    with PartStore(tmp_path / "o.parts", {"k": 1}) as store:
        path = store.commit(0, ids, vectors)
        assert path.stat().st_size < 1_000_000
        ((got_ids, got),) = list(store.parts())
    assert got_ids == ids
    np.testing.assert_array_equal(got, vectors)


def test_artifact_checksums_are_verified(tiny_artifact, tmp_path, capsys):
    """A file changed after export is refused at load (exit 2); --no-verify skips the check.
    A malformed manifest is one line and exit 2."""
    art = tmp_path / "art"
    art.mkdir()
    for f in tiny_artifact.iterdir():
        if f.name != "tokenizer_config.json":
            os.link(f, art / f.name)
    cfg = (tiny_artifact / "tokenizer_config.json").read_text(encoding="utf-8")
    (art / "tokenizer_config.json").write_text(cfg + "\n ", encoding="utf-8")  # same meaning
    src = _write_jsonl(tmp_path / "in.jsonl", IDS[:3], TEXTS[:3])
    out = tmp_path / "out.npy"
    assert main(_argv(art, src, out)) == 2
    _one_line(capsys, "'tokenizer_config.json' does not match its sha256")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "in.jsonl"]
    assert main([*_argv(art, src, out), "--no-verify"]) == 0

    (art / "qexport.json").unlink()  # a hard link: do not write through it
    (art / "qexport.json").write_text('{"embedding_dim": ', encoding="utf-8")
    assert main([*_argv(art, src, tmp_path / "o2.npy"), "--no-verify"]) == 2
    _one_line(capsys, "qexport.json: invalid JSON")


def test_duplicate_ids_exit_2(tiny_artifact, tmp_path, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", ["a", "b", "a"], ["x", "y", "z"])
    assert main(_argv(tiny_artifact, src, tmp_path / "o.parquet")) == 2
    _one_line(capsys, "id 'a' appears more than once (record 3)")
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_ray_engine_refuses_npy_up_front(tiny_artifact, tmp_path, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", IDS[:2], TEXTS[:2])
    argv = ["embed", str(tiny_artifact), str(src), "-o", str(tmp_path / "o.npy")]
    assert main([*argv, "--engine", "ray"]) == 2
    _one_line(capsys, "--engine ray writes parquet, not .npy: use -o OUT.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]
