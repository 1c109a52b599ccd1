"""`qexport validate` on a reranker artifact: agreement with the card recipe, thresholds that
fail, and the report files."""

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
    assert r["verdict"] == "pass" and r["agreement"]["logodds_max_diff"] <= 1e-4
    assert r["agreement"]["spearman_min"] >= 0.999 and r["speed"] is None
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "reranker validation report: PASS" in md and "logodds_max_diff" in md
    assert "<table>" in (tmp_path / "rep" / "report.html").read_text()


def test_validate_fails_an_impossible_bar(rerank_fp32, rerank_ckpt, beir, capsys):
    rc = main(["-q", "validate", str(rerank_fp32), "--reference", str(rerank_ckpt),
               "--dataset", str(beir), "--thresholds", "logodds_max_diff=1e-12"])  # fmt: skip
    assert rc == 1
    assert "FAIL: logodds_max_diff" in capsys.readouterr().out


def test_validate_usage_errors(rerank_fp32, rerank_ckpt, capsys):
    assert (
        main(["validate", str(rerank_fp32), "--reference", "x", "--thresholds", "cosine_min=1"])
        == 2
    )
    assert "reranker threshold" in capsys.readouterr().err
    assert main(["validate", str(rerank_fp32), "--reference", "x", "--threshold", "0.9"]) == 2


@pytest.mark.slow
def test_validate_speed_section(rerank_int8, beir, tmp_path, capsys):
    """Speed and memory of both engines in spawned processes; int8 against random:<name>."""
    rc = main(["-q", "validate", str(rerank_int8), "--reference", "random:qwen3-reranker-tiny",
               "--dataset", str(beir), "--speed", "--repeats", "1",
               "--report", str(tmp_path / "rep")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    for engine in ("onnxruntime", "pytorch"):
        assert r["speed"][engine]["pairs_per_s"] > 0 and r["speed"][engine]["peak_rss_mb"] > 0
    assert "Speed and memory" in (tmp_path / "rep" / "report.md").read_text()
