"""Output safety of `qexport onnx -o OUT [--overwrite]`: only an empty folder or a qexport
artifact is ever replaced; leftovers of killed runs are recognised and removed (only ours);
modes follow the umask."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qexport.cli import main
from qexport.export.api import ExportOptions, export_onnx
from qexport.export.artifact import OutputError, check_output
from qexport.export.staging import STAGING_MARKER, clean_stale
from qexport.manifest import MANIFEST_NAME, load_manifest


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def ours_beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if ".qexport-" in p.name)


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["-q", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.fixture
def artifact(tiny_artifact, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(tiny_artifact, out)
    return out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"notes.txt": b"mine"}, "holds 'notes.txt', which its manifest does not list"),
        ({"sub/data.bin": b"mine"}, "holds 'sub', which its manifest does not list"),
        ({"qexport.json": b"{not json"}, "qexport.json is missing or invalid"),
    ],
)
def test_overwrite_refuses_what_is_not_an_artifact(artifact, capsys, extra, needle):
    for name, data in extra.items():
        (artifact / name).parent.mkdir(exist_ok=True)
        (artifact / name).write_bytes(data)
    before = tree(artifact)
    msg = cli_error(capsys, "onnx", "random:qwen3-tiny", "-o", str(artifact), "--overwrite")
    assert "is not a qexport artifact" in msg and needle in msg
    assert tree(artifact) == before and not ours_beside(artifact)


def test_overwrite_refuses_user_folder(tmp_path, capsys):
    user = tmp_path / "docs"
    (user / "deep").mkdir(parents=True)
    (user / "notes.txt").write_text("important")
    (user / "deep" / "x").write_text("x")
    before = tree(user)
    msg = cli_error(capsys, "onnx", "random:qwen3-tiny", "-o", str(user), "--overwrite")
    assert "no qexport.json" in msg
    assert tree(user) == before


def test_refuses_cwd_ancestors_root_home_and_links(artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(artifact)  # even a real artifact is not replaced while it is the cwd
    assert "is the current folder" in cli_error(capsys, "onnx", "x", "-o", ".", "--overwrite")
    assert "is the current folder" in cli_error(capsys, "onnx", "x", "-o", "..", "--overwrite")
    assert "root or home" in cli_error(capsys, "onnx", "x", "-o", str(Path.home()), "--overwrite")
    monkeypatch.chdir(tmp_path)
    assert "root or home" in cli_error(capsys, "onnx", "x", "-o", "/", "--overwrite")
    (tmp_path / "link").symlink_to(artifact)
    assert "symbolic link" in cli_error(capsys, "onnx", "x", "-o", "link", "--overwrite")
    assert (artifact / MANIFEST_NAME).is_file() and not ours_beside(artifact)


def test_overwrite_replaces_an_artifact_and_follows_umask(artifact):
    old = os.umask(0o027)
    try:
        export_onnx(
            "random:qwen3-tiny",
            artifact,
            ExportOptions(progress=False, overwrite=True, max_length=64),
        )
    finally:
        os.umask(old)
    assert load_manifest(artifact, verify=True).max_length == 64
    assert not ours_beside(artifact)
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in artifact.iterdir()} == {0o640}


def test_empty_folder_is_replaced_with_umask_022(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    old = os.umask(0o022)
    try:
        export_onnx("random:qwen3-tiny", out, ExportOptions(progress=False))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert not ours_beside(out)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_leftovers_only_ours_are_removed(artifact, tmp_path):
    out = tmp_path / "out"
    pid = dead_pid()
    partial = tmp_path / f".out.qexport-{pid}-abc_12.partial"
    partial.mkdir()
    (partial / STAGING_MARKER).write_text(f"{out}\n")
    (partial / "model.onnx").write_bytes(b"half")
    old = tmp_path / f".out.qexport-{pid}-zz9.old"
    old.mkdir()
    (old / STAGING_MARKER).write_text(f"{out}\n")
    shutil.copytree(artifact, old / "x")  # killed after moving the old artifact aside
    probe = tmp_path / f".out.qexport-{pid}-p1.probe"
    probe.mkdir()
    kept = {
        f".out.qexport-{pid}-nomark.partial": None,  # no marker, not empty, not an artifact
        f".out.qexport-{os.getppid()}-live.partial": f"{out}\n",  # a live process
        f".out.qexport-{pid}-other.partial": f"{tmp_path / 'other'}\n",  # marker names another
        f".other.qexport-{pid}-x.partial": f"{tmp_path / 'other'}\n",  # another output
        f".out.{pid}-abc.partial": f"{out}\n",  # not our naming
    }
    for name, marker in kept.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "user.txt").write_text("mine")
        if marker:
            (tmp_path / name / STAGING_MARKER).write_text(marker)
    removed = clean_stale(out)
    assert sorted(p.name for p in removed) == sorted([partial.name, old.name, probe.name])
    assert tree(out) == tree(artifact)  # the old artifact was put back
    assert all((tmp_path / name / "user.txt").is_file() for name in kept)


def test_sigkill_mid_write_then_rerun_cleans_up(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "qexport.cli", "-q", "onnx", "random:qwen3-tiny", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    staged: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = [p for p in tmp_path.glob(".out.qexport-*.partial") if (p / "model.onnx").exists()]
        if staged:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert staged and proc.returncode == -signal.SIGKILL, "the export finished before the kill"
    assert staged[0].is_dir() and not out.exists()  # the killed run left its staging folder
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert load_manifest(out, verify=True).files and not ours_beside(out)


def test_check_output_refuses_files(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output(tmp_path / "f", overwrite=True)
