"""The `qexport` command line: real subprocesses, exit codes, one-line errors, atomic output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qexport.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial" in p.name or ".probe" in p.name]


def test_missing_model_folder(tmp_path):
    proc = run("onnx", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "out"))
    assert_usage_error(proc, "does not exist")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_unknown_precision(tmp_path):
    proc = run("onnx", "random:qwen3-tiny", "-o", str(tmp_path / "out"), "--precision", "int3")
    assert_usage_error(proc, "unknown precision 'int3'")
    assert not (tmp_path / "out").exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run("onnx", "random:qwen3-tiny", "-o", str(blocker / "out"))
    assert_usage_error(proc, "is not a folder")
    assert not leftovers(tmp_path)


def test_unknown_random_model(tmp_path):
    assert_usage_error(
        run("onnx", "random:nope", "-o", str(tmp_path / "o")), "unknown random model 'nope'"
    )


def test_missing_argument():
    proc = run("onnx", "random:qwen3-tiny")
    assert_usage_error(proc, "required: -o/--output")


def test_failure_midway_leaves_nothing(tmp_path):
    """A checkpoint folder whose weights lack a tensor fails during the build: no output."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from qexport.export.random import REGISTRY

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(REGISTRY["qwen3-tiny"].config))
    save_file(
        {"embed_tokens.weight": np.zeros((151669, 128), np.float32)},
        str(ckpt / "model.safetensors"),
    )
    from qexport.export.tokenizer_files import build_byte_tokenizer

    build_byte_tokenizer(ckpt, 512)
    proc = run("onnx", str(ckpt), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert errors == [proc.stderr.strip().splitlines()[-1]]  # progress lines, then one error line
    assert "weight 'layers.0.input_layernorm.weight' missing from the checkpoint" in errors[0]
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("precision", ["fp32"])
def test_export_then_validate(tmp_path, precision):
    out = tmp_path / "art"
    proc = run(
        "onnx",
        "random:qwen3-tiny",
        "-o",
        str(out),
        "--precision",
        precision,
        "--max-length",
        "4096",
    )
    assert proc.returncode == 0, proc.stderr
    assert {"model.onnx", "qexport.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not leftovers(tmp_path)
    proc = run("validate", str(out), "--reference", "random:qwen3-tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    # exporting onto a non-empty folder needs --overwrite
    assert_usage_error(run("onnx", "random:qwen3-tiny", "-o", str(out)), "--overwrite")


@pytest.mark.parametrize("value", ["0", "-5", "1"])
def test_max_length_below_two(tmp_path, value):
    proc = run("onnx", "random:qwen3-tiny", "-o", str(tmp_path / "o"), "--max-length", value)
    assert_usage_error(proc, f"--max-length must be at least 2, got {value}")
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_max_length_zero_in_the_api(tmp_path):
    from qexport.export.api import ExportOptions, export_onnx

    with pytest.raises(ValueError, match="--max-length must be at least 2, got 0"):
        export_onnx("random:qwen3-tiny", tmp_path / "o", ExportOptions(max_length=0))


def test_output_dot_is_refused_without_leftovers(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for args in (["--overwrite"], []):
        proc = run("onnx", "random:qwen3-tiny", "-o", ".", *args, cwd=tmp_path)
        assert_usage_error(proc, "is the current folder or contains it")
    assert not [p.name for p in tmp_path.parent.iterdir() if ".qexport-" in p.name]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_int8_dynamic_activation_scales(tmp_path):
    """--activation-scales per-tensor exports int8-dynamic without the per-token scaling ops
    (the faster, less faithful variant); the default scales every projection per token, ffn
    only some; the flag is refused with any other precision."""
    import json

    import onnx

    records, reduce_max = {}, {}
    for scales in ("per-token", "per-tensor", "ffn"):
        out = tmp_path / scales
        proc = run("onnx", "random:qwen3-tiny", "-o", str(out), "--precision", "int8-dynamic",
                   *(["--activation-scales", scales] if scales != "per-token" else []))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        records[scales] = json.loads((out / "qexport.json").read_text())["quantization"]
        graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
        reduce_max[scales] = sum(n.op_type == "ReduceMax" for n in graph.node)
    quantized = records["per-token"]["matmuls_quantized"]
    assert quantized > 0 and len(records["per-token"]["per_token_projections"]) > 0
    assert records["per-token"]["per_token"] == "all"  # no flag: Qwen3's default
    assert reduce_max["per-token"] > 0  # one per scaled input (q, k, v share theirs)
    assert records["per-tensor"]["per_token_projections"] == [] and reduce_max["per-tensor"] == 0
    # ffn: the FFN output projections only (tests/export/test_quantize_ffn_tokens.py)
    assert 0 < reduce_max["ffn"] < reduce_max["per-token"]
    proc = run("onnx", "random:qwen3-tiny", "-o", str(tmp_path / "x"), "--activation-scales",
               "per-tensor")  # fmt: skip
    assert_usage_error(proc, "--activation-scales applies to --precision int8-dynamic only")
