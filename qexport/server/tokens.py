"""Request input: check the texts, then tokenise them with memory bounded by the limits.

Tokenising costs ~125 bytes of RSS per token, so a request is never tokenised whole first:

- every text is UTF-8 encoded once (a lone surrogate such as JSON "\\ud800" is refused here,
  naming the item); `bytes + special tokens`, capped at max_length, bounds its tokens from
  above (byte-level BPE has at least one byte per token, WordPiece at least one character;
  tests/server/test_tokens.py checks both tokenizers);
- a text longer than `TextEncoder.clip_chars` characters is tokenised from a prefix only
  (`runtime.tokenize.encode_bounded`, the runtime's one bounded tokeniser) and goes alone;
- when the upper bound of the request exceeds `max_tokens`, texts are tokenised in groups and
  counting stops at the first group that passes the limit (413).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..runtime.tokenize import TextEncoder
from .errors import ApiError

GROUP_BYTES = 256 << 10  # texts tokenised together past the bound, at most this many bytes


def bad_input(message: str, param: str) -> ApiError:
    return ApiError(400, message, param, reason="bad_input")


def _string(item: Any, where: str) -> str:
    if not isinstance(item, str):
        raise bad_input(
            f"{where} is {type(item).__name__}, not a string (only strings are accepted, not "
            "token ids)",
            where.split("[")[0],
        )
    return item


def check_items(
    items: list[Any],
    param: str,
    max_items: int,
    text_of: Callable[[Any, str], str] = _string,
    send: str = "a non-empty list of strings",
) -> list[str]:
    """A request's list of texts (`input`, `documents`): each item's text from `text_of`
    (which refuses what is not one), or ApiError 400 naming the bad item, 413 past
    `max_items`. Empty strings are refused: they have nothing to embed or rank."""
    if not items:
        raise bad_input(f"{param} is empty: send {send}", param)
    if len(items) > max_items:
        raise ApiError(
            413,
            f"{param} has {len(items)} items; at most {max_items} per request",
            param,
            reason="too_many_items",
        )
    texts = [text_of(item, f"{param}[{i}]") for i, item in enumerate(items)]
    for i, text in enumerate(texts):
        if not text:
            raise bad_input(f"{param}[{i}] is an empty string", param)
    return texts


def check_texts(value: str | list[Any], max_items: int) -> list[str]:
    """The request's `input` as a list of non-empty, UTF-8-encodable strings, or ApiError."""
    if isinstance(value, str):
        if not value:
            raise bad_input("input is an empty string", "input")
        value = [value]
    return check_items(value, "input", max_items, send="a string or a non-empty list of strings")


def utf8_lengths(texts: list[str]) -> list[int]:
    """UTF-8 byte length of each text; 400 naming the first text that cannot be encoded."""
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(len(t) if t.isascii() else len(t.encode("utf-8")))
        except UnicodeEncodeError as exc:
            raise ApiError(
                400,
                f"input[{i}] is not valid Unicode: {exc.reason} at character {exc.start} "
                "(a lone UTF-16 surrogate such as \\ud800?)",
                "input",
                reason="bad_input",
            ) from None
    return out


class BoundedTokenizer:
    """Tokenise like `Embedder.tokenize` (no instruction), never holding more than the limits."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.max_length = encoder.max_length
        self.special = len(encoder.tokenizer.encode("", add_special_tokens=True).ids)

    def upper_bound(self, nbytes: int) -> int:
        return min(nbytes + self.special, self.max_length)

    def _groups(self, texts: list[str], nbytes: list[int], limit: int) -> Iterator[list[int]]:
        group: list[int] = []
        size = 0
        clip = self.encoder.clip_chars
        for i, n in enumerate(nbytes):
            if len(texts[i]) > clip:
                if group:
                    yield group
                    group, size = [], 0
                yield [i]
                continue
            if group and size + n > limit:
                yield group
                group, size = [], 0
            group.append(i)
            size += n
        if group:
            yield group

    def tokenize(
        self, texts: list[str], max_tokens: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, type_ids) after truncation to max_length; ApiError 413 past `max_tokens`."""
        nbytes = utf8_lengths(texts)
        # under the bound, the request cannot pass the limit: tokenise it in one call
        fits = sum(self.upper_bound(n) for n in nbytes) <= max_tokens
        ids: list[list[int]] = []
        type_ids: list[list[int]] = []
        total = 0
        for group in self._groups(texts, nbytes, 1 << 62 if fits else GROUP_BYTES):
            enc = self.encoder.encode([texts[i] for i in group], warn=False)
            g_ids, g_types = enc.ids, enc.type_ids
            total += sum(len(r) for r in g_ids)
            if total > max_tokens:
                raise ApiError(
                    413,
                    f"input has at least {total} tokens; at most {max_tokens} per request",
                    "input",
                    reason="too_many_tokens",
                )
            ids += g_ids
            type_ids += g_types
        return ids, type_ids
