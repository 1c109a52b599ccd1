"""The server's bounded tokenisation against the runtime's own (`TextEncoder.encode` on the
whole text): the same ids for every text, long ones included, and `bytes + specials` bounds the
token count from above for the byte-level BPE (Qwen3 tiny) and WordPiece (all-MiniLM-L6-v2)
tokenizers alike."""

from __future__ import annotations

import pytest

from qexport.runtime.tokenize import TextEncoder, utf8_lengths
from qexport.server.errors import ApiError
from qexport.server.tokens import request_limits
from tests.texts import MIXED

HARD = [
    *MIXED,
    "Ünïcödé àccents ÉÇÀ ǅ İstanbul ß ﬁ Å Ω ẞ",  # NFD/lowercase expansions (WordPiece)
    "한국어 텍스트 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀👍🏽 👩‍👩‍👧",  # Hangul, astral planes, ZWJ sequences
    "\t \n  \u00a0\u2003 spaces   and\ttabs \r\n",
    "a" * 300,  # one word longer than WordPiece's 100 characters
    "x" * 5 + " " + "ab," * 50,
]


def long_texts(max_length: int) -> list[str]:
    n = max_length * 10
    return [
        "The quick brown fox jumps over the lazy dog. " * (n // 9),  # prose, cut mid-sentence
        "中国的首都是北京。" * (n // 4),
        "word " * n,
        "z" * (n * 7),  # one pre-token far longer than the clip prefix
        " ".join(f"token{i}" for i in range(n)),
    ]


@pytest.fixture(scope="module", params=["qwen3-tiny", "all-MiniLM-L6-v2"])
def encoder(request, tiny_artifact):  # type: ignore[no-untyped-def]
    if request.param == "qwen3-tiny":
        return TextEncoder(tiny_artifact, 32768, None)
    return TextEncoder(request.getfixturevalue("minilm_dir"), 256, None)


def test_bytes_bound_tokens_from_above(encoder):
    texts = HARD + [t[:5000] for t in long_texts(encoder.max_length)]
    raw = encoder.tokenizer.encode_batch(texts, add_special_tokens=True)
    for text, n, enc in zip(texts, utf8_lengths(texts), raw, strict=True):
        assert len(enc.ids) <= n + encoder.extra, text[:40]


def test_bounded_tokenize_equals_whole_text_tokenize(encoder, monkeypatch):
    """Counting in groups (when the bytes' bound passes the limit) gives the rows of one call."""
    texts = HARD + long_texts(encoder.max_length)
    whole = encoder.encode(texts, warn=False)
    assert max(len(r) for r in whole.ids) == encoder.max_length  # the long ones were truncated
    total = sum(map(len, whole.ids))
    seen: list[int] = []
    monkeypatch.setattr(encoder, "_encode_into", _spy(encoder._encode_into, seen))
    monkeypatch.setattr(encoder, "upper_bound", lambda n: encoder.max_length)  # a loose bound
    counted = encoder.encode(texts, warn=False, max_tokens=total)
    assert counted.ids == whole.ids and counted.type_ids == whole.type_ids
    assert len(seen) > 1 and sum(seen) == len(texts)  # it ran in groups


def _spy(fn, seen):  # type: ignore[no-untyped-def]
    def run(out, texts):  # type: ignore[no-untyped-def]
        seen.append(len(texts))
        return fn(out, texts)

    return run


def test_token_limit_stops_counting(encoder):
    texts = ["word " * 200] * 5000
    with pytest.raises(ApiError, match="at most 1000 per request") as info:
        with request_limits("input"):
            encoder.encode(texts, warn=False, max_tokens=1000)
    assert info.value.status == 413
    counted = int(str(info.value).split()[4])
    total = sum(len(r) for r in encoder.encode(texts[:100], warn=False).ids) * 50
    assert 1000 < counted < total / 4  # stopped early, not after all of them


def test_lone_surrogate_is_named(encoder):
    with pytest.raises(ApiError, match=r"input\[1\] is not valid Unicode") as info:
        with request_limits("input"):
            encoder.encode(["ok", "a\ud800b"], warn=False, max_tokens=100, name="input")
    assert info.value.status == 400
