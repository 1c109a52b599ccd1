"""`qexport validate` on a reranker artifact: the one suite takes the task from the manifest;
agreement with the card recipe, thresholds that fail, the report files, the speed grid."""

from __future__ import annotations

import json

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
