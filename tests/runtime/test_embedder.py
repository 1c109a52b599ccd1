"""Embedder API: input checks, Matryoshka dims, instruction template, torch-free import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from qexport.runtime import Embedder


@pytest.fixture(scope="module")
def emb(tiny_artifact):
    return Embedder(tiny_artifact, device="cpu")


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        (["ok", 3], r"texts\[1\] is int, not str"),
        ([], "texts is empty"),
        ("a single string", "not a single string"),
        (["ok", None], r"texts\[1\] is NoneType"),
        (
            ["ok", "fine", "a\ud800b"],
            r"texts\[2\] is not valid Unicode: .*'\\ud800' at character 1",
        ),
        (["\udfff"], r"texts\[0\] is not valid Unicode"),
        (["ok", b"bytes"], r"texts\[1\] is bytes, not str"),
    ],
)
def test_bad_texts(emb, texts, match):
    with pytest.raises(ValueError, match=match):
        emb.embed(texts)


def test_bad_dim(emb):
    with pytest.raises(ValueError, match=r"dim 100 is not allowed; allowed sizes: \[32, 64, 128\]"):
        emb.embed(["x"], dim=100)


@pytest.mark.parametrize("dim", [64.0, "64", True])
def test_dim_of_another_type_is_a_value_error(emb, dim):
    """Issue 27 item 9: dim=64.0 raised TypeError (slice indices) from deep inside."""
    with pytest.raises(ValueError, match="dim must be an integer"):
        emb.embed(["x"], dim=dim)
    assert emb.embed(["x"], dim=np.int64(64)).shape == (1, 64)


def test_output_contract(emb):
    out = emb.embed(["a", "bb", "ccc"])
    assert out.dtype == np.float32 and out.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_matryoshka_is_slice_and_renormalise(emb):
    texts = ["Hello world", "Explain gravity", "中国的首都是北京。"]
    full = emb.embed(texts)
    for dim in (32, 64):
        small = emb.embed(texts, dim=dim)
        want = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
        assert small.shape == (3, dim)
        np.testing.assert_allclose(small, want, atol=1e-6)


def test_instruction_uses_card_template(emb):
    task = "Given a web search query, retrieve relevant passages that answer the query"
    q = emb.embed(["Explain gravity"], instruction=task)
    manual = emb.embed([f"Instruct: {task}\nQuery:Explain gravity"])
    np.testing.assert_array_equal(q, manual)
    assert not np.allclose(q, emb.embed(["Explain gravity"]))


def test_results_in_input_order(emb):
    texts = ["a much longer text than the others " * 5, "b", "medium text here"]
    out = emb.embed(texts, batch_size=2)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(out[i], emb.embed([t])[0], atol=1e-5)


def test_runtime_imports_no_torch_or_transformers(tiny_artifact):
    code = (
        "import sys; from qexport.runtime import Embedder; "
        f"e = Embedder({str(tiny_artifact)!r}, device='cpu'); e.embed(['hi']); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad; print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


def test_corrupt_manifest(tmp_path):
    from qexport.manifest import ManifestError

    with pytest.raises(ManifestError, match="not a qexport artifact"):
        Embedder(tmp_path)
    with pytest.raises(ManifestError, match="does not exist"):
        Embedder(tmp_path / "nope")


def test_unencodable_everywhere(emb):
    """Lone surrogates never reach tokenizers (which raises an unexplained TypeError)."""
    with pytest.raises(ValueError, match=r"instruction is not valid Unicode"):
        emb.embed(["x"], instruction="Instruct \ud800")
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
        list(emb.embed_chunks([["a", "b"], ["c", "d\ud800"]]))
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
        emb.tokenize(["a", "\ud800"])
    # TextEncoder alone (used by other callers) explains tokenizers' TypeError too
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode"):
        emb.encoder.encode(["a", "b\udc80"])
    # valid non-ASCII text is unaffected
    assert emb.embed(["中国的首都是北京。", "naïve café 😀"]).shape == (2, 128)
