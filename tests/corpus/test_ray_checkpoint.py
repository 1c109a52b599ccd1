"""The Ray engine's checkpoint checked against its output (`ray_checkpoint.reconcile`), on
folders laid out as Ray Data 2.60 writes them (`<write uuid>_<task>` data files, committed
and `.pending.parquet` checkpoint files): no Ray needed. The end-to-end run on a local Ray
cluster is tests/corpus/test_ray_engine.py::test_rerun_after_output_deleted_or_truncated."""

from __future__ import annotations

import pytest

from qexport.corpus.ray_checkpoint import reconcile, verify_output

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TASKS = {"w_000000": ["a", "b"], "w_000001": ["c", "d"], "w_000002": ["e"]}


def _layout(tmp_path, pending=("w_000002",)):
    out, ckpt = tmp_path / "out.parquet", tmp_path / "out.parquet.ray-checkpoint"
    out.mkdir()
    ckpt.mkdir()
    for task, ids in TASKS.items():
        pq.write_table(
            pa.table({"id": ids, "embedding": [[0.5]] * len(ids)}), out / f"{task}_0.parquet"
        )
        name = f"{task}.pending.parquet" if task in pending else f"{task}.parquet"
        pq.write_table(pa.table({"id": ids}), ckpt / name)
    return out, ckpt


def _recorded(ckpt):
    files = [f for f in sorted(ckpt.glob("*.parquet")) if not f.name.endswith(".pending.parquet")]
    return sorted(i for f in files for i in pq.read_table(f)["id"].to_pylist())


def test_consistent_checkpoint_is_left_alone(tmp_path, caplog):
    out, ckpt = _layout(tmp_path)
    before = {f.name: f.read_bytes() for f in ckpt.iterdir()}
    assert reconcile(str(out), str(ckpt)) == 4  # e's data file belongs to a pending write
    assert {f.name: f.read_bytes() for f in ckpt.iterdir()} == before
    assert "dropped from the checkpoint" not in caplog.text


def test_output_deleted_drops_the_whole_checkpoint(tmp_path, caplog):
    out, ckpt = _layout(tmp_path)
    for f in out.iterdir():
        f.unlink()
    out.rmdir()
    assert reconcile(str(out), str(ckpt)) == 0
    assert _recorded(ckpt) == []
    assert f"recorded 4 ids that {out} does not hold" in caplog.text


def test_removed_file_drops_only_its_ids(tmp_path, caplog):
    out, ckpt = _layout(tmp_path)
    (out / "w_000001_0.parquet").unlink()
    assert reconcile(str(out), str(ckpt)) == 2
    assert _recorded(ckpt) == ["a", "b"]
    assert "recorded 2 ids that" in caplog.text


def test_partly_present_checkpoint_file_is_cut_down(tmp_path):
    """A checkpoint file whose ids are only partly in the output keeps exactly those."""
    out, ckpt = _layout(tmp_path, pending=())
    (out / "w_000001_0.parquet").unlink()
    pq.write_table(pa.table({"id": ["c"], "embedding": [[0.5]]}), out / "w_000001_0.parquet")
    (ckpt / ".w_000000.parquet.qexport").write_bytes(b"a rewrite cut short")
    assert reconcile(str(out), str(ckpt)) == 4
    assert _recorded(ckpt) == ["a", "b", "c", "e"]
    assert not (ckpt / ".w_000000.parquet.qexport").exists()


def test_rows_the_checkpoint_does_not_record_are_refused(tmp_path):
    out, ckpt = _layout(tmp_path, pending=())
    (ckpt / "w_000001.parquet").unlink()
    with pytest.raises(
        ValueError, match=r"holds 2 rows that the checkpoint folder .* \(e\.g\. id 'c'\)"
    ):
        reconcile(str(out), str(ckpt))


def test_duplicate_output_ids_are_refused(tmp_path):
    out, ckpt = _layout(tmp_path, pending=())
    pq.write_table(pa.table({"id": ["a"], "embedding": [[0.5]]}), out / "other.parquet")
    with pytest.raises(ValueError, match="holds id 'a' 2 times"):
        reconcile(str(out), str(ckpt))
    with pytest.raises(ValueError, match="holds id 'a' 2 times"):
        verify_output(str(out), 6)


def test_verify_output_counts_rows(tmp_path):
    out, _ = _layout(tmp_path, pending=())
    assert verify_output(str(out), 5) == 5
    with pytest.raises(RuntimeError, match="holds 5 rows but the input has 6 records"):
        verify_output(str(out), 6)
