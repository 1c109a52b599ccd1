"""Hand-edited and hostile manifests: each corruption ends in one line naming the problem,
from `Embedder` and from the CLI (exit 2), never a traceback or a silent wrong vector; with
verification, tampered weights and tokenizers are refused naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qexport.cli import main
from qexport.manifest import MANIFEST_NAME, ManifestError, load_manifest
from qexport.runtime import Embedder


def clone(artifact: Path, dest: Path) -> Path:
    """A writable copy: weights hard-linked (never written through), the rest copied."""
    dest.mkdir()
    for p in artifact.iterdir():
        if p.name == "model.onnx":
            os.link(p, dest / p.name)
        else:
            shutil.copyfile(p, dest / p.name)
    return dest


def edit(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Rewrite qexport.json with `change` applied in place (a list it returns replaces all)."""
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    new = change(data)
    path.write_text(json.dumps(new if isinstance(new, list) else data))


def setter(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _wrong_dim_everywhere(d: dict[str, Any]) -> None:
    """Consistent inside the manifest (dims, outputs symbolic), wrong for the graph."""
    d.update(embedding_dim=256, allowed_dims=[256])
    d["outputs"][0]["shape"] = ["batch", "dim"]


def _escaping_link(folder: Path) -> None:
    os.symlink(folder.parent / "outside.onnx", folder / "evil.onnx")
    (folder.parent / "outside.onnx").write_bytes(b"x")
    edit(folder, setter("graph_file", "evil.onnx"))


def _unlisted_graph(d: dict[str, Any]) -> None:
    del d["files"]["model.onnx"]


HEX = "0" * 64
CORRUPTIONS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("negative max_length", setter("max_length", -5), "max_length must be an integer in 2.."),
    ("string max_length", setter("max_length", "512"), "max_length must be an integer"),
    ("huge max_length", setter("max_length", 10**12), "max_length must be an integer in"),
    ("zero embedding_dim", setter("embedding_dim", 0), "embedding_dim must be an integer in 1.."),
    (
        "dim vs outputs",
        lambda d: d.update(embedding_dim=64, allowed_dims=[32, 64]),
        "embedding_dim 64 does not match the sentence_embedding output width 128",
    ),
    ("dim vs graph", _wrong_dim_everywhere, "embedding_dim 256 does not match the graph's"),
    ("dims above dim", setter("allowed_dims", [32, 64, 256]), "allowed_dims must be distinct"),
    ("dims empty", setter("allowed_dims", []), "allowed_dims must be distinct"),
    ("dims strings", setter("allowed_dims", ["128"]), "allowed_dims must be distinct"),
    ("precision", setter("precision", "fp8"), "precision must be one of fp32"),
    ("pooling", setter("pooling", "avg"), "pooling must be one of"),
    ("normalize", setter("normalize", "yes"), "normalize must be true or false"),
    ("graph up", setter("graph_file", "../x.onnx"), "graph_file '../x.onnx' must be a relative"),
    ("graph absolute", setter("graph_file", "/etc/passwd"), "graph_file '/etc/passwd' must be"),
    ("graph missing", setter("graph_file", "nope.onnx"), "graph_file 'nope.onnx' named in the"),
    ("files escape", lambda d: d["files"].update({"../../etc/passwd": HEX}), "must be a relative"),
    ("files digest", lambda d: d["files"].update({"model.onnx": "abc"}), "must be a sha256 hex"),
    ("files list", setter("files", ["model.onnx"]), "files must be an object"),
    ("tokenizer up", setter("tokenizer", {"file": "../t.json"}), "tokenizer file '../t.json'"),
    ("left padding", lambda d: d["tokenizer"].update(padding_side="left"), "padding_side 'left'"),
    ("no input_ids", lambda d: d["inputs"].pop(0), "inputs must include 'input_ids'"),
    ("bad tensor", setter("inputs", [{"name": 1}]), "inputs[0] must be {name: str"),
    ("template", setter("instruction_template", "{instruction} {query}"), "instruction_template"),
    ("unknown field", setter("colour", "red"), "unknown field 'colour'"),
    ("missing field", lambda d: d.pop("max_length"), "missing field 'max_length'"),
    ("not an object", lambda d: [d], "manifest: must be a JSON object, got list"),
    ("schema", setter("schema_version", 99), "schema_version 99 is not supported"),
    ("unlisted graph", _unlisted_graph, "'model.onnx' has no sha256 in 'files'"),
]


def _corrupt(tiny_artifact: Path, tmp_path: Path, change: Callable[..., Any]) -> Path:
    folder = clone(tiny_artifact, tmp_path / "art")
    edit(folder, change)
    return folder


@pytest.mark.parametrize(
    ("change", "needle"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupt_manifest_embedder(tiny_artifact, tmp_path, change, needle):
    folder = _corrupt(tiny_artifact, tmp_path, change)
    with pytest.raises(ManifestError) as info:
        Embedder(folder, device="cpu", verify=True)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "needle"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupt_manifest_cli(tiny_artifact, tmp_path, capsys, change, needle):
    folder = _corrupt(tiny_artifact, tmp_path, change)
    code = main(["-q", "validate", str(folder), "--reference", "random:qwen3-tiny"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_escaping_symlink(tiny_artifact, tmp_path):
    folder = clone(tiny_artifact, tmp_path / "art")
    _escaping_link(folder)
    with pytest.raises(ManifestError, match="resolves outside the artifact folder"):
        Embedder(folder, device="cpu")


def test_invalid_json_and_cli_subprocess(tiny_artifact, tmp_path):
    folder = clone(tiny_artifact, tmp_path / "art")
    (folder / MANIFEST_NAME).write_text('{"schema_version": 1,')
    with pytest.raises(ManifestError, match="invalid JSON"):
        Embedder(folder, device="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "qexport.cli", "validate", str(folder), "--reference", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "invalid JSON" in proc.stderr


def test_flipped_weight_bytes_refused_when_verifying(tiny_artifact, tmp_path):
    folder = tmp_path / "art"
    shutil.copytree(tiny_artifact, folder)
    graph = folder / "model.onnx"
    onnx = pytest.importorskip("onnx")
    raw = next(  # the bytes of one weight of the first layer, found in the file
        t.raw_data
        for t in onnx.load(str(graph)).graph.initializer
        if "layers.0" in t.name and len(t.raw_data) >= 4096
    )
    data = bytearray(graph.read_bytes())
    at = data.find(raw)
    assert at > 0
    data[at + 3 : at + len(raw) : 4] = bytes(b ^ 0x80 for b in data[at + 3 : at + len(raw) : 4])
    graph.write_bytes(bytes(data))  # sign bits flipped: a plausible, wrong weight
    with pytest.raises(
        ManifestError, match=r"artifact file 'model\.onnx' does not match its sha256"
    ):
        Embedder(folder, device="cpu", verify=True)
    # unverified, the tampered graph loads and gives other vectors: what verification prevents
    texts = ["The capital of China is Beijing.", "gravity"]
    tampered = Embedder(folder, device="cpu", verify=False).embed(texts)
    good = Embedder(tiny_artifact, device="cpu").embed(texts)
    assert not np.allclose(tampered, good, atol=1e-4)


def test_edited_tokenizer_refused_when_verifying(tiny_artifact, tmp_path):
    folder = clone(tiny_artifact, tmp_path / "art")
    tok = folder / "tokenizer.json"
    data = json.loads(tok.read_text())
    vocab = data["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # swap two tokens
    tok.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"'tokenizer\.json' does not match its sha256"):
        Embedder(folder, device="cpu", verify=True)
    with pytest.raises(ManifestError, match=r"'tokenizer\.json' does not match its sha256"):
        load_manifest(folder, verify=True)
    texts = ["a cab", "bab"]
    tampered = Embedder(folder, device="cpu", verify=False).embed(texts)
    assert not np.allclose(tampered, Embedder(tiny_artifact, device="cpu").embed(texts), atol=1e-4)


def test_tokenizer_file_from_manifest(tiny_artifact, tmp_path):
    """The runtime reads the tokenizer the manifest names (not a hard-coded name)."""
    folder = clone(tiny_artifact, tmp_path / "art")
    (folder / "tokenizer.json").rename(folder / "tok.json")
    edit(folder, lambda d: d.update(tokenizer={**d["tokenizer"], "file": "tok.json"}, files={}))
    texts = ["hello", "world"]
    np.testing.assert_array_equal(
        Embedder(folder, device="cpu").embed(texts),
        Embedder(tiny_artifact, device="cpu").embed(texts),
    )


@pytest.mark.parametrize(
    ("location", "needle", "holder"),
    [
        # qexport's own checks, before onnxruntime opens the graph, whatever its version
        ("../w.bin", "'../w.bin' must be a relative path inside the artifact folder", "init"),
        ("ABS", "must be a relative path inside the artifact folder", "init"),
        ("link.bin", "resolves outside the artifact folder", "init"),
        ("../w.bin", "must be a relative path inside the artifact folder", "constant"),
        ("../w.bin", "must be a relative path inside the artifact folder", "subgraph"),
        ("in.bin@past", "lie past 'in.bin'", "init"),
        ("missing.bin", "file 'missing.bin' is missing", "init"),
    ],
)
def test_external_data_outside_the_folder(tiny_artifact, tmp_path, location, needle, holder):
    """A graph whose external data points outside the folder (.., absolute, a symlink; in an
    initializer, a Constant's tensor or a subgraph), past its file's end, or at no file is
    refused with one line by qexport itself (issue 27, item 8), never read."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    folder = clone(tiny_artifact, tmp_path / "art")
    outside = tmp_path / "w.bin"
    np.ones((4, 4), np.float32).tofile(outside)
    np.ones((2,), np.float32).tofile(folder / "in.bin")
    if location == "ABS":
        location = str(outside)
    if location == "link.bin":
        os.symlink(outside, folder / "link.bin")
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location.split("@")[0])
    if location.endswith("@past"):
        w.external_data.add(key="length", value="64")
    if holder == "init":
        nodes, inits = [helper.make_node("MatMul", ["x", "W"], ["y"])], [w]
    else:
        const = helper.make_node("Constant", [], ["W"], value=w)
        nodes, inits = [const, helper.make_node("MatMul", ["x", "W"], ["y"])], []
    if holder == "subgraph":
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        body = helper.make_graph(nodes, "then", [], [out])
        cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)]
        inits = [cond]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    (folder / "model.onnx").unlink()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ManifestError) as info:
        Embedder(folder, device="cpu")
    msg = str(info.value)
    assert "\n" not in msg
    assert needle in msg


def test_tokenizer_ids_past_the_vocabulary_are_refused_at_load(tiny_artifact, tmp_path):
    """Issue 27, item 6: a tokenizer.json edited to emit an id the graph's embedding table has
    no row for (checksums resealed) is refused at load with one line, by Embedder and by
    `qexport embed` (exit 2), never a forward-pass failure."""
    folder = clone(tiny_artifact, tmp_path / "art")
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    word = next(iter(vocab))
    vocab[word] = 10_000_000
    (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    edit(folder, setter("files", {}))
    with pytest.raises(ManifestError, match="token id 10000000, but the graph's embedding table"):
        Embedder(folder, device="cpu")
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n", encoding="utf-8")
    argv = [sys.executable, "-m", "qexport.cli", "-q", "embed", str(folder), str(corpus)]
    r = subprocess.run(
        [*argv, "-o", str(tmp_path / "o.npy"), "--no-verify"], capture_output=True, text=True
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "embedding table" in r.stderr and not (tmp_path / "o.npy").exists()


# qexport.json exactly as main (schema 1, commit 4f14af1) wrote it for `qexport onnx
# random:qwen3-tiny` and `random:qwen3-reranker-tiny --precision int8`
V1 = Path(__file__).parent / "export" / "data"


def v1_manifest(task: str) -> dict[str, Any]:
    return json.loads((V1 / f"manifest-v1-{task}.json").read_text(encoding="utf-8"))


def test_v1_embed_manifest_from_main_loads_and_runs(tiny_artifact, tmp_path):
    folder = clone(tiny_artifact, tmp_path / "art")
    old = v1_manifest("embed")
    assert old["schema_version"] == 1 and old["rerank"] is None
    (folder / MANIFEST_NAME).write_text(json.dumps(old))
    m = load_manifest(folder)
    assert (m.task, m.embedding_dim, m.allowed_dims) == ("embed", 128, [32, 64, 128])
    assert m.rerank is None and "rerank" not in m.to_dict() and m.to_dict()["schema_version"] == 2
    texts = ["What is the capital of China?", "Explain gravity"]
    got = Embedder(folder, device="cpu").embed(texts)
    assert np.array_equal(got, Embedder(tiny_artifact, device="cpu").embed(texts))


def test_v1_rerank_manifest_from_main_loads_typed():
    from qexport.manifest import Manifest, RerankPrompt

    old = v1_manifest("rerank")
    assert old["embedding_dim"] == 1 and old["similarity"] == "none"  # main's placeholders
    m = Manifest.from_dict(old)
    assert m.task == "rerank" and m.embedding is None and isinstance(m.rerank, RerankPrompt)
    assert m.rerank.prefix_ids == old["rerank"]["prefix_ids"] and m.rerank.pad_id == 151643
    assert m.rerank.max_body_tokens == 8192 - 39 - 9
    new = m.to_dict()
    assert not {"pooling", "normalize", "embedding_dim", "allowed_dims", "similarity"} & set(new)
    assert Manifest.from_dict(new).rerank == m.rerank  # schema 2 round trip
    with pytest.raises(ManifestError, match="a rerank manifest has no embedding fields"):
        _ = m.embedding_dim


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (setter("schema_version", 3), "schema_version 3 is not supported"),
        (setter("embedding_dim", 64), "schema 1 rerank manifest with embedding_dim set; re-export"),
        (lambda d: d["rerank"].pop("pad_id"), "missing rerank.pad_id; re-export"),
        (lambda d: d["rerank"].update(colour=1), "unknown field rerank.colour; re-export"),
        (lambda d: d.update(schema_version=2), "unknown field 'pooling'"),  # placeholders in 2
        (setter("rerank", None), "rerank must be an object"),
    ],
)
def test_unreadable_rerank_manifests_say_so_in_one_line(change, needle):
    from qexport.manifest import Manifest

    data = v1_manifest("rerank")
    change(data)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert needle in str(info.value) and "\n" not in str(info.value)
