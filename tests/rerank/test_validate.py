"""`qexport validate` on a reranker artifact: the one suite takes the task from the manifest;
agreement with the card recipe, thresholds that fail, the report files, the speed grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qexport.cli import main


@pytest.fixture(scope="module")
def beir(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("beir") / "mini"
    folder.mkdir()
    docs = {"d1": "The capital of China is Beijing.", "d2": "Gravity attracts two bodies.",
            "d3": "Basil and tomatoes make a pasta sauce.", "d4": "Tokyo is the capital of Japan.",
            "d5": "Vaccines train the immune system."}  # fmt: skip
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items())
    )
    queries = {"q1": "What is the capital of China?", "q2": "Explain gravity"}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return folder


def test_validate_passes_against_card(rerank_fp32, rerank_ckpt, beir, tmp_path, capsys):
    rc = main(["-q", "validate", str(rerank_fp32), "--reference", str(rerank_ckpt),
               "--dataset", str(beir), "--no-speed", "--report", str(tmp_path / "rep")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "10 pairs / 2 queries" in out and "PASS" in out
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert r["schema"] == "qexport.validate.report" and r["task"] == "rerank"
    assert r["verdict"] == "pass" and r["agreement"]["logodds_max_diff"] <= 1e-4
    assert r["agreement"]["spearman_min"] >= 0.999 and r["speed"] is None
    assert r["thresholds"]["top3_overlap_min"] == 0.95  # fp32's bar (export/bars.py)
    checks = {c["name"]: c["status"] for c in r["checks"]}
    assert checks == {"finite": "pass", "logodds_max_diff": "pass", "spearman_min": "pass",
                      "top3_overlap_min": "pass", "batch_logodds_max_diff": "pass"}  # fmt: skip
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "# qexport validation report: PASS" in md and "| logodds_max_diff | PASS |" in md
    assert "Task rerank" in md and "Agreement with the card recipe" in md
    assert "<table>" in (tmp_path / "rep" / "report.html").read_text()


def test_validate_fails_an_impossible_bar(rerank_fp32, rerank_ckpt, beir, capsys):
    rc = main(["-q", "validate", str(rerank_fp32), "--reference", str(rerank_ckpt),
               "--dataset", str(beir), "--thresholds", "logodds_max_diff=1e-12"])  # fmt: skip
    assert rc == 1
    out = capsys.readouterr().out
    assert "FAIL: logodds_max_diff" in out and "worst pair (" in out and "PASS" not in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--thresholds", "cosine_min=1"],
         "unknown threshold 'cosine_min' for a rerank artifact (it is an embedding one); known: "
         "logodds_max_diff, spearman_min, top3_overlap_min, batch_logodds_max_diff"),
        (["--thresholds", "spearman_min=nan"], "is not a finite number"),
        (["--threshold", "0.9"], "--threshold is for embed artifacts, this one is rerank"),
        (["--texts", "t.txt"], "--texts is for embed artifacts"),
        (["--max-corpus", "5"], "--max-corpus is for embed artifacts"),
        (["--max-queries", "0"], "--max-queries must be >= 1"),
    ],
)  # fmt: skip
def test_validate_usage_errors(rerank_fp32, args, needle, capsys):
    assert main(["validate", str(rerank_fp32), "--reference", "x", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


@pytest.mark.slow
def test_validate_speed_section(rerank_int8, beir, tmp_path, capsys):
    """The one speed harness on a reranker: both engines in their own processes over the same
    token rows of the grid; int8 (judged by the int8 bars) against random:<name>."""
    rc = main(["-q", "validate", str(rerank_int8), "--reference", "random:qwen3-reranker-tiny",
               "--dataset", str(beir), "--speed", "--batch-sizes", "1,2", "--lengths", "8,96",
               "--repeats", "2", "--report", str(tmp_path / "rep")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "speed: up to" in out and "pairs/s" in out
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert r["thresholds"]["top3_overlap_min"] == pytest.approx(2 / 3)
    sp = r["speed"]
    assert sp["task"] == "rerank" and sp["unit"] == "pair"
    assert sp["providers"] == r["environment"]["onnxruntime_providers_used"]
    assert sp["providers"][-1] == "CPUExecutionProvider"
    # 8 tokens cannot hold the prompt: raised to the shortest pair, with a note
    assert sp["lengths"][0] > 8 and sp["lengths"][1] == 96 and sp["notes"]
    assert [(g["batch_size"], g["length"]) for g in sp["grid"]] == [
        (1, sp["lengths"][0]), (2, sp["lengths"][0]), (1, 96), (2, 96)]  # fmt: skip
    for g in sp["grid"]:
        for engine in ("onnxruntime", "pytorch"):
            cell = g[engine]
            assert cell["rows_per_s"] > 0 and cell["repeats"] == 2
            assert cell["tokens"] <= g["batch_size"] * g["length"]
            assert cell["rows_per_s"] == pytest.approx(
                g["batch_size"] / cell["latency_p50_ms"] * 1e3
            )
        assert g["onnxruntime"]["tokens"] == g["pytorch"]["tokens"]  # the same rows
    for engine in ("onnxruntime", "pytorch"):
        assert sp["engines"][engine]["rss_peak_mb"] > 20
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Speed and memory" in md and "pairs/s" in md


def _damage(src: Path, dst: Path, name: str, scale: float) -> None:
    """Copy an artifact, scale one weight matrix, fix the manifest's sha256."""
    import hashlib
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    init = next(t for t in model.graph.initializer if t.name == name)
    arr = numpy_helper.to_array(init).astype(np.float32) * np.float32(scale)
    init.CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(model, str(dst / "model.onnx"))
    manifest = json.loads((dst / "qexport.json").read_text())
    for fname in manifest["files"]:
        manifest["files"][fname] = hashlib.sha256((dst / fname).read_bytes()).hexdigest()
    (dst / "qexport.json").write_text(json.dumps(manifest, indent=2))


def test_validate_nonfinite_reranker_fails_on_finite(rerank_fp32, rerank_ckpt, tmp_path, capsys):
    """A reranker whose graph overflows: the suite's `finite` check fails (exit 1) and names
    the pairs; the agreement checks are skipped, not computed from NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        _damage(rerank_fp32, tmp_path / "bad", "layers.0.mlp.down_proj.weight", float("inf"))
    rc = main(["-q", "validate", str(tmp_path / "bad"), "--reference", str(rerank_ckpt),
               "--device", "cpu", "--report", str(tmp_path / "rep"), "--no-speed"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "FAIL: finite" in out and "pair(s) NaN/Inf" in out and "PASS" not in out
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    checks = {c["name"]: c for c in r["checks"]}
    assert r["failed"] == ["finite"] and checks["finite"]["value"] == r["agreement"]["pairs"] > 0
    assert checks["finite"]["detail"]["indices"][:3] == [0, 1, 2]
    assert {checks[k]["status"] for k in checks if k != "finite"} == {"skipped"}
    assert "## FAILED: finite" in (tmp_path / "rep" / "report.md").read_text()
