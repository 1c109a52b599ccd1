"""Hostile prompt templates in a manifest (issue 27, item 5): a format spec, a conversion,
attribute or index access or an unknown name is refused at load with one line naming the
template, by Embedder, Reranker and the CLI (exit 2), never run (before: 3 GB and 15 s for
one query with `{instruction:>20000000}`, a Rust panic in `qexport embed`, AttributeError
tracebacks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qexport.manifest import MANIFEST_NAME, ManifestError
from qexport.runtime import Embedder, Reranker
from qexport.templates import check_template
from tests.conftest import SHARED, need_shared
from tests.test_manifest import clone

HOSTILE = [
    "Instruct: {instruction:>20000000}\nQuery:{text}",
    "{instruction.__class__}{text}",
    "{instruction[0]}{text}",
    "{instruction!r}{text}",
    "{instruction}{text}{other}",
    "{0}{text}",
    "{instruction}{text",
]


def _edit(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    data["files"] = {}  # resealed the cheap way: nothing left to verify against
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("template", HOSTILE)
def test_embedder_refuses_a_hostile_instruction_template(tiny_artifact, tmp_path, template):
    folder = clone(tiny_artifact, tmp_path / "art")
    _edit(folder, lambda d: d.update(instruction_template=template))
    with pytest.raises(ManifestError, match="instruction_template") as info:
        Embedder(folder, device="cpu")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("template", HOSTILE[:2])
def test_cli_embed_and_validate_exit_2(tiny_artifact, tmp_path, template):
    folder = clone(tiny_artifact, tmp_path / "art")
    _edit(folder, lambda d: d.update(instruction_template=template))
    corpus = tmp_path / "q.txt"
    corpus.write_text("what is the capital of China?\n", encoding="utf-8")
    cli = [sys.executable, "-m", "qexport.cli", "-q"]
    runs = [
        [
            *cli,
            "embed",
            str(folder),
            str(corpus),
            "-o",
            str(tmp_path / "o.npy"),
            "--instruction",
            "find it",
            "--no-verify",
        ],
        [*cli, "validate", str(folder), "--reference", "random:qwen3-tiny"],
    ]
    for argv in runs:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "instruction_template may hold only" in lines[0], r.stderr


def test_the_published_templates_pass():
    check_template("Instruct: {instruction}\nQuery:{text}", ("instruction", "text"), "t")
    body = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    check_template(body, ("instruction", "query", "doc"), "t")
    check_template("task: search result | query: {text}", ("instruction", "text"), "t")
    check_template("literal {{braces}} {text}", ("instruction", "text"), "t")


@pytest.mark.parametrize("template", ["{doc.__nope__}", "{query:>9999999}{doc}", "{doc!s}"])
def test_reranker_refuses_a_hostile_body_template(tmp_path, template):
    from qexport.export.api import ExportOptions, export_onnx

    tokenizer = need_shared(SHARED / "qwen3-reranker" / "0.6B")
    art = tmp_path / "rr"
    export_onnx(
        "random:qwen3-reranker-tiny", art, ExportOptions(progress=False, tokenizer=tokenizer)
    )

    def change(d):  # type: ignore[no-untyped-def]
        d["rerank"]["template"] = template

    _edit(art, change)
    with pytest.raises(ManifestError, match="template may hold only") as info:
        Reranker(art, device="cpu")
    assert "\n" not in str(info.value)
