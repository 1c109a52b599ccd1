"""`qexport validate` end to end: reports for a random Qwen3 artifact and for all-MiniLM-L6-v2
read back from report.json, the HTML rendered by headless Chromium, and a damaged artifact
that fails with exit code 1 and a report that names the failing metric and the worst texts."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED, need_shared

SCIFACT = SHARED / "data" / "scifact"
# tiny grids: the speed part is exercised, not benchmarked (bench/ and docs/ hold real runs)
SPEED = ["--batch-sizes", "1,2", "--lengths", "8,32", "--repeats", "2", "--warmup", "1"]


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qexport.cli", "-q", "validate", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )


def env_providers(r: dict) -> list[str]:
    return r["environment"]["onnxruntime_providers_used"]


def dataset_args() -> list[str]:
    if not SCIFACT.is_dir():
        return []
    return ["--dataset", str(SCIFACT), "--max-corpus", "60", "--max-queries", "10"]


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """random:qwen3-tiny with max length 256 (its byte-level tokenizer makes SciFact documents
    thousands of tokens long; the cap keeps the PyTorch side of the retrieval check small)."""
    from qexport.export.api import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("v") / "tiny256"
    export_onnx("random:qwen3-tiny", out, ExportOptions(progress=False, max_length=256))
    return out


@pytest.fixture(scope="module")
def tiny_report(tiny256: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("report-tiny")
    proc = validate(
        str(tiny256), "--reference", "random:qwen3-tiny", "--report", str(folder),
        *SPEED, *dataset_args(),
    )  # fmt: skip
    return proc, folder, json.loads((folder / "report.json").read_text())


@pytest.mark.slow
def test_tiny_qwen3_report(tiny_report):
    proc, folder, r = tiny_report
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "32 texts: cosine min" in proc.stdout.splitlines()[0]
    assert r["schema"] == "qexport.validate.report" and r["schema_version"] == 2
    assert r["task"] == "embed" and r["artifact"]["task"] == "embed"
    assert r["verdict"] == "pass" and r["failed"] == []
    checks = {c["name"]: c for c in r["checks"]}
    for name in ("finite", "cosine_min", "cosine_mean", "batch_cosine_min", "padding_cosine_min"):
        assert checks[name]["status"] == "pass", checks[name]
    # fp32 random Qwen3: every path agrees with transformers to float32 rounding
    pt = r["fidelity"]["per_text"]
    assert pt["texts"] == 32 and pt["nonfinite"] == 0 and len(pt["cosines"]) == 32
    assert pt["cosine_min"] > 0.99999 and pt["max_abs_diff"] < 1e-4
    assert pt["cosine_min"] <= pt["cosine_p1"] <= pt["cosine_mean"]
    f = r["fidelity"]
    assert f["padding"]["padded_to_tokens"] > 100
    assert set(f["matryoshka"]["dims"]) == {"32", "64"}  # allowed sizes below the full 128
    assert all(v["cosine_min"] > 0.9999 for v in f["matryoshka"]["dims"].values())
    ins = f["instruction"]
    assert ins["cosine_min"] > 0.9999 and ins["instruction"].startswith("Given a web search")
    assert ins["cosine_with_vs_without_instruction_mean"] < 0.999  # the template is applied
    assert "skipped" in f["known_answer"] and "Qwen3-Embedding-0.6B" in f["known_answer"]["skipped"]
    assert any("known-answer" in n for n in r["notes"])
    # speed: both engines, every cell, real measurements
    sp = r["speed"]
    assert set(sp["engines"]) == {"onnxruntime", "pytorch"}
    assert sp["task"] == "embed" and sp["unit"] == "text"
    assert sp["providers"] == env_providers(r) and sp["engines"]["pytorch"]["device"] == "cpu"
    assert [(g["batch_size"], g["length"]) for g in sp["grid"]] == [
        (1, 8),
        (2, 8),
        (1, 32),
        (2, 32),
    ]
    for g in sp["grid"]:
        for e in ("onnxruntime", "pytorch"):
            cell = g[e]
            assert cell["tokens_per_s"] > 0 and cell["repeats"] == 2
            assert 0 < cell["latency_p50_ms"] <= cell["latency_p95_ms"]
            assert cell["rss_peak_mb"] > 20
        assert g["speedup"] == pytest.approx(
            g["onnxruntime"]["tokens_per_s"] / g["pytorch"]["tokens_per_s"]
        )
        assert g["onnxruntime"]["tokens"] <= g["batch_size"] * g["length"]
        assert g["onnxruntime"]["tokens"] == g["pytorch"]["tokens"]  # the same token rows
    # the PyTorch process holds torch: more resident memory than the onnxruntime-only one
    assert sp["engines"]["pytorch"]["rss_peak_mb"] > sp["engines"]["onnxruntime"]["rss_peak_mb"]
    env = r["environment"]
    assert env["onnxruntime_providers_used"] == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu" in env["libraries"] or "onnxruntime" in env["libraries"]
    md = (folder / "report.md").read_text()
    assert "# qexport validation report: PASS" in md and "| cosine_min | PASS |" in md


@pytest.mark.slow
def test_tiny_qwen3_retrieval(tiny_report):
    need_shared(SCIFACT)
    _, _, r = tiny_report
    rt = r["retrieval"]
    assert rt["dataset"] == "scifact" and rt["queries"] == 10 and rt["corpus"] == 60
    assert rt["subsampled"]["corpus_total"] == 5183 and rt["subsampled"]["queries_total"] == 300
    assert any("subsample" in n for n in r["notes"])
    assert rt["query_instruction"].startswith("Given a scientific claim")
    for e in ("onnxruntime", "pytorch"):
        assert 0 <= rt[e]["ndcg@10"] <= 1 and 0 <= rt[e]["recall@100"] <= 1
    # 60 documents: Recall@100 ranks everything, so every relevant (kept) document is found
    assert rt["onnxruntime"]["recall@100"] == 1.0
    assert abs(rt["ndcg10_drop"]) < 1e-3 and rt["top10_overlap_mean"] >= 0.9
    assert rt["published"]["ndcg@10"] is None  # random weights: no published score


@pytest.mark.slow
def test_html_renders_plots_in_chromium(tiny_report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    from PIL import Image

    _, folder, _ = tiny_report
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
            "--window-size=1200,2200", f"--screenshot={shot}",
            (folder / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2200, 1200)

    def near(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(img - np.array(rgb)).sum(axis=2) < 40).sum())

    # the plots' colours: onnxruntime blue (histogram bars, throughput lines) and PyTorch orange;
    # neither appears anywhere else on the page
    assert near((31, 119, 180)) > 2000
    assert near((255, 127, 14)) > 300


def _damage(src: Path, dst: Path, scale: float) -> str:
    """Copy an artifact, scale one MatMul weight matrix, fix the manifest's sha256."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    weights = [
        n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
    ]
    # the first MLP down projection: it writes into the residual stream (a projection that a
    # norm follows, such as q_proj before Qwen3's q_norm, is scale-invariant)
    name = next(w for w in weights if "down_proj" in w)
    arr = numpy_helper.to_array(inits[name]) * np.float32(scale)
    inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    onnx.save(model, str(dst / "model.onnx"))
    manifest = json.loads((dst / "qexport.json").read_text())
    for fname in manifest["files"]:
        manifest["files"][fname] = hashlib.sha256((dst / fname).read_bytes()).hexdigest()
    (dst / "qexport.json").write_text(json.dumps(manifest, indent=2))
    return name


@pytest.mark.slow
def test_damaged_artifact_fails_and_points_at_it(tiny256, tmp_path):
    name = _damage(tiny256, tmp_path / "damaged", 1.5)
    proc = validate(
        str(tmp_path / "damaged"), "--reference", "random:qwen3-tiny", "--no-speed",
        "--report", str(tmp_path / "rep"),
    )  # fmt: skip
    assert proc.returncode == 1, f"{name}: {proc.stdout}{proc.stderr}"
    assert "FAIL: cosine_min" in proc.stdout and "PASS" not in proc.stdout
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert r["verdict"] == "fail" and "cosine_min" in r["failed"]
    checks = {c["name"]: c for c in r["checks"]}
    worst = checks["cosine_min"]["detail"]["worst_texts"]
    cosines = r["fidelity"]["per_text"]["cosines"]
    assert worst[0]["cosine"] == min(cosines) < 0.9999
    assert [w["cosine"] for w in worst] == sorted(w["cosine"] for w in worst)
    # a weight change keeps the artifact consistent with itself: those checks still pass
    assert checks["batch_cosine_min"]["status"] == "pass"
    assert checks["padding_cosine_min"]["status"] == "pass"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## FAILED: cosine_min" in md and worst[0]["text"][:20] in md


def test_manifest_checksum_guards_a_silent_edit(tiny256, tmp_path):
    """Editing a weight without updating the manifest is a usage error (exit 2), not a pass."""
    dst = tmp_path / "edited"
    _damage(tiny256, dst, 1.01)
    manifest = json.loads((dst / "qexport.json").read_text())
    manifest["files"]["model.onnx"] = "0" * 64
    (dst / "qexport.json").write_text(json.dumps(manifest))
    proc = validate(str(dst), "--reference", "random:qwen3-tiny", "--no-speed")
    assert proc.returncode == 2 and "does not match its sha256" in proc.stderr


@pytest.fixture(scope="module")
def minilm_report(
    minilm_artifact: Path, minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    folder = tmp_path_factory.mktemp("report-minilm")
    proc = validate(
        str(minilm_artifact), "--reference", str(minilm_dir), "--report", str(folder),
        *SPEED, *dataset_args(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((folder / "report.json").read_text())


@pytest.mark.slow
def test_minilm_report(minilm_report):
    r = minilm_report
    assert r["verdict"] == "pass"
    pt = r["fidelity"]["per_text"]
    assert pt["cosine_min"] > 0.99999 and r["artifact"]["pooling"] == "mean"
    # no Matryoshka sizes and no instruction template for this model: skipped, with the reason
    f = r["fidelity"]
    assert f["matryoshka"]["dims"] == {} and "instruction template" in f["instruction"]["skipped"]
    statuses = {c["name"]: c["status"] for c in r["checks"]}
    assert statuses["instruction_cosine_min"] == "skipped"
    assert statuses["known_answer_tol"] == "skipped"
    assert {g["length"] for g in r["speed"]["grid"]} == {8, 32}


@pytest.mark.slow
def test_minilm_retrieval(minilm_report):
    need_shared(SCIFACT)  # an explicit skip with the reason, never a narrowed assertion
    rt = minilm_report["retrieval"]
    assert rt["published"] == {
        "model": "all-minilm-l6-v2",
        "ndcg@10": 0.64508,
        "comparable": False,
        "note": "not comparable: the corpus or the queries were subsampled",
    }
    assert rt["query_instruction"] is None
    assert abs(rt["ndcg10_drop"]) < 1e-3 and rt["top10_overlap_mean"] >= 0.95
    # a real model on a small corpus that holds every relevant document: easy retrieval
    assert rt["onnxruntime"]["ndcg@10"] > 0.7


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--thresholds", "cosine_minn=0.9"], "unknown threshold 'cosine_minn'"),
        (
            ["--thresholds", "logodds_max_diff=0.1"],
            "unknown threshold 'logodds_max_diff' for an embedding artifact (it is a rerank "
            "one); known: cosine_min, cosine_mean,",
        ),
        (["--thresholds", "cosine_min=inf"], "is not a finite number"),
        (["--thresholds", "cosine_min=high"], "is not a number"),
        (["--dataset", "/no/such/beir"], "does not exist"),
        (["--texts", "/no/such/texts.txt"], "texts file '/no/such/texts.txt' does not exist"),
        (["--lengths", "0,8"], "positive integers"),
    ],
)
def test_usage_errors(tiny_artifact, args, needle):
    proc = validate(str(tiny_artifact), "--reference", "random:qwen3-tiny", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quantized_report_uses_its_precision_thresholds(tmp_path):
    """An int8 export (weight-only MatMulNBits) is judged by the int8 bars, and its report shows
    a real quantization error: below fp32's agreement, above the int8 threshold."""
    from qexport.export.api import ExportOptions, export_onnx

    art = tmp_path / "int8"
    # a refusal (below the int8 bar) or a calibration error must fail this test, not skip it
    export_onnx(
        "random:qwen3-tiny", art, ExportOptions(progress=False, precision="int8", max_length=256)
    )
    proc = validate(
        str(art), "--reference", "random:qwen3-tiny", "--no-speed", "--report", str(tmp_path / "r")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert r["artifact"]["precision"] == "int8" and r["artifact"]["quantization"]
    assert r["thresholds"]["cosine_min"] == 0.995 and r["speed"] is None
    pt = r["fidelity"]["per_text"]
    assert 0.995 <= pt["cosine_min"] < 0.99999 and pt["max_abs_diff"] > 1e-4
    assert r["verdict"] == "pass"
