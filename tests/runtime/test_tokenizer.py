"""The runtime tokenises exactly like transformers on the real Qwen3-Embedding tokenizer."""

from __future__ import annotations

import warnings

import pytest

from qexport.runtime.tokenize import TextEncoder
from tests.conftest import SHARED, need_shared
from tests.texts import MIXED

TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
TASK = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module")
def encoder(qwen_tokenizer_dir):
    return TextEncoder(qwen_tokenizer_dir, 32768, TEMPLATE)


def test_known_ids(encoder):
    assert encoder.encode(["Hello world"]).ids == [[9707, 1879, 151643]]
    assert encoder.tokenizer.encode("你好", add_special_tokens=False).ids == [108386]
    assert encoder.tokenizer.get_vocab_size() == 151669


def test_same_ids_as_transformers(encoder, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    docs = MIXED
    queries = encoder.format(["What is the capital of China?", "Explain gravity"], TASK)
    assert queries[0] == f"Instruct: {TASK}\nQuery:What is the capital of China?"
    for texts in (docs, queries):
        ours = encoder.encode(texts).ids
        theirs = hf(texts)["input_ids"]
        assert ours == theirs
        assert all(row[-1] == 151643 and row.count(151643) == 1 for row in ours)


def test_truncation_keeps_end_token_and_warns(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    enc = TextEncoder(qwen_tokenizer_dir, 16, TEMPLATE)
    text = "The quick brown fox jumps over the lazy dog. " * 10
    with pytest.warns(
        UserWarning,
        match=r"1 text\(s\) longer than max_length 16 were truncated: \d+ token\(s\) dropped",
    ):
        out = enc.encode([text, "short"])
    assert len(out.ids[0]) == 16 and out.ids[0][-1] == 151643
    hf = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    assert out.ids[0] == hf([text], truncation=True, max_length=16)["input_ids"][0]
    full = len(enc.tokenizer.encode(text).ids)
    assert out.dropped == full - 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode(["short"])  # no warning when nothing is cut


def _cases():
    root = need_shared(SHARED / "qwen3-embedding" / "tokenizer-cases")
    # llama.cpp's format: inputs end with a separator line; one output line per input
    inputs = (root / "qwen2.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    outputs = (root / "qwen2.out").read_text(encoding="utf-8").split("\n")[:-1]
    return inputs, outputs


def test_reference_cases(encoder):
    inputs, outputs = _cases()
    assert len(inputs) == len(outputs) == 46
    for text, line in zip(inputs, outputs, strict=True):
        want = [int(x) for x in line.split()]
        assert encoder.tokenizer.encode(text, add_special_tokens=False).ids == want, repr(text)


def _long_text(chars: int) -> str:
    return ("Zürich café 東京 naïve data, the quick brown fox 12345. " * (chars // 40 + 1))[:chars]


@pytest.mark.parametrize("max_length", [16, 300])
def test_a_long_text_is_tokenised_from_a_prefix_with_the_same_ids(qwen_tokenizer_dir, max_length):
    """Issue 27 item 3: a text past TextEncoder.clip_chars is tokenised from a prefix only,
    and keeps exactly the ids transformers keeps when it tokenises the whole text."""
    from transformers import AutoTokenizer

    enc = TextEncoder(qwen_tokenizer_dir, max_length, TEMPLATE)
    text = _long_text(50 * enc.clip_chars)
    hf = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir))
    want = hf([text], truncation=True, max_length=max_length)["input_ids"][0]
    with pytest.warns(UserWarning, match=r"truncated: at least \d+ token\(s\) dropped"):
        out = enc.encode([text, "short"])
    assert out.ids[0] == want and out.clipped == 1
    assert out.ids[1] == hf(["short"])["input_ids"][0]
    assert 0 < out.dropped < len(hf([text])["input_ids"][0]) - max_length


def test_a_long_text_keeps_wordpiece_ids_and_type_ids(minilm_dir):
    from transformers import AutoTokenizer

    enc = TextEncoder(minilm_dir, 256, None)
    text = _long_text(20 * enc.clip_chars)
    hf = AutoTokenizer.from_pretrained(str(minilm_dir))
    want = hf([text], truncation=True, max_length=256)
    out = enc.encode([text], warn=False)
    assert out.ids[0] == want["input_ids"][0] and out.clipped == 1
    assert out.type_ids[0] == want["token_type_ids"][0]
