"""`qexport validate --report FOLDER` where FOLDER cannot be written: exit 2 at once with one
line naming the folder, before any of the validation runs (issue 27)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest


def validate(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "qexport.cli", "-q", "validate", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, time.monotonic() - start


@pytest.mark.parametrize("where", ["proc", "under a file"])
def test_unwritable_report_folder_fails_before_validating(tiny_artifact, tmp_path, where):
    if where == "proc":
        folder = Path("/proc/report")
    else:
        (tmp_path / "a-file").write_text("x")
        folder = tmp_path / "a-file" / "report"
    proc, took = validate(
        str(tiny_artifact), "--reference", "random:qwen3-tiny", "--report", str(folder)
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--report {folder}: cannot write a report there" in lines[0]
    assert proc.stdout == ""  # no summary: the suite never ran
    assert took < 60, took  # the tiny suite alone takes longer than starting the CLI


def test_writable_report_folder_is_created_and_written(tiny_artifact, tmp_path):
    folder = tmp_path / "new" / "report"
    proc, _ = validate(
        str(tiny_artifact), "--reference", "random:qwen3-tiny", "--report", str(folder),
        "--no-speed",
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert {p.name for p in folder.iterdir()} == {"report.json", "report.md", "report.html"}
