"""Tokenisation with the `tokenizers` library: prompt template, truncation that keeps the
appended end token(s) last, right padding."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..templates import check_template

# A text longer than CLIP_CHARS_PER_TOKEN * (max_length + MARGIN) characters is tokenised from
# a prefix only (`TextEncoder._prefix_encoding`); byte-level BPE and WordPiece give at least
# one character per token, so the first prefix already holds what max_length can keep for
# ordinary text.
MARGIN = 64  # tokens tokenised past max_length before a prefix is trusted
CLIP_CHARS_PER_TOKEN = 6  # first prefix: this many characters per token allowed


@dataclass
class Encoded:
    ids: list[list[int]]
    type_ids: list[list[int]]
    truncated: int  # texts that were cut
    dropped: int  # tokens dropped in all (a lower bound when `clipped`)
    clipped: int = 0  # texts tokenised from a prefix only (longer than TextEncoder.clip_chars)


def check_text(text: object, where: str, *, empty: bool = True) -> str:
    """Refuse what the tokenizer cannot take, naming it: a non-string, a string that is not
    valid Unicode (lone surrogates such as "a\\ud800b", which UTF-8 cannot encode), and with
    `empty=False` an empty string. ASCII strings are accepted at once (str.isascii reads a
    flag); others are encoded once."""
    if not isinstance(text, str):
        raise ValueError(f"{where} is {type(text).__name__}, not str")
    if not empty and not text:
        raise ValueError(f"{where} is an empty string")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} is not valid Unicode: {exc.reason} {text[exc.start]!r} at character "
            f"{exc.start}"
        ) from None
    return text


def check_texts(texts: list[str], name: str = "texts", *, empty: bool = True) -> None:
    """check_text for each: ValueError naming `name[i]`."""
    for i, text in enumerate(texts):
        check_text(text, f"{name}[{i}]", empty=empty)


def text_list(value: Any, name: str, verb: str, *, empty: bool = True) -> list[str]:
    """A list of texts from a caller (`texts` to embed, `documents` to rerank), or a ValueError
    naming the problem: a single string, a non-iterable, an empty list, a bad item."""
    if isinstance(value, str):
        raise ValueError(
            f"{name} must be a list of strings, not a single string: wrap it in a list"
        )
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"{name} must be a list of strings, not {type(value).__name__}") from None
    if not items:
        raise ValueError(f"{name} is empty: nothing to {verb}")
    check_texts(items, name, empty=empty)
    return items


class TokenLimitError(ValueError):
    """Rows hold more tokens than allowed (counted before all of them were tokenised)."""

    def __init__(self, tokens: int, limit: int, what: str = "the pairs") -> None:
        super().__init__(f"{what} have at least {tokens} tokens; at most {limit}")
        self.tokens, self.limit = tokens, limit


def encode_bounded(
    tokenizer: Tokenizer, texts: list[str], keep: int, *, special: bool
) -> list[Any]:
    """`tokenizers` encodings of `texts` whose first `keep` ids are exactly those of the whole
    text, with memory bounded by `keep`, not by the text: a text longer than
    `CLIP_CHARS_PER_TOKEN * (keep + MARGIN)` characters is tokenised from growing prefixes
    (4x each time) until one holds `keep + MARGIN` tokens, and the rest is never tokenised (the
    margin keeps the kept ids equal to those of the whole text; byte-level BPE and WordPiece
    give at least one character per token). Shorter texts go through one batch call. The one
    bounded tokeniser of the runtime: texts (`TextEncoder`), query-document pairs
    (`reranker.PairEncoder`) and the server's requests all use it."""
    need = keep + MARGIN
    clip = CLIP_CHARS_PER_TOKEN * need
    short = [t for t in texts if len(t) <= clip]
    try:
        encs = iter(tokenizer.encode_batch_fast(short, add_special_tokens=special))
    except TypeError:  # tokenizers says neither which text nor why
        check_texts(texts)
        raise
    return [next(encs) if len(t) <= clip else _prefix(tokenizer, t, need, special) for t in texts]


def _prefix(tokenizer: Tokenizer, text: str, need: int, special: bool) -> Any:
    cap = CLIP_CHARS_PER_TOKEN * need
    while cap < len(text):
        enc = tokenizer.encode(text[:cap], add_special_tokens=special)
        if len(enc.ids) >= need:
            return enc
        cap *= 4
    return tokenizer.encode(text, add_special_tokens=special)


class TextEncoder:
    def __init__(
        self,
        folder: Path,
        max_length: int,
        template: str | None,
        *,
        tokenizer_file: str = "tokenizer.json",
    ) -> None:
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ValueError(
                f"tokenizer {tokenizer_file!r} cannot be loaded: {str(exc)[:200]}"
            ) from exc
        # Some tokenizer.json files ship fixed padding/truncation (all-MiniLM-L6-v2: 128);
        # the runtime pads per batch and truncates at the manifest's max length itself.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = max_length
        self.template = (
            None
            if template is None
            else check_template(template, ("instruction", "text"), "instruction_template")
        )

    def format(self, texts: list[str], instruction: str | None) -> list[str]:
        if instruction is None:
            return texts
        check_text(instruction, "instruction")
        if self.template is None:
            raise ValueError("this model has no instruction template; embed without instruction")
        return [self.template.format(instruction=instruction, text=t) for t in texts]

    @property
    def clip_chars(self) -> int:
        """Texts longer than this are tokenised from a prefix only (`encode_bounded`)."""
        return CLIP_CHARS_PER_TOKEN * (self.max_length + MARGIN)

    def encode(self, texts: list[str], *, warn: bool = True) -> Encoded:
        ids, type_ids = [], []
        truncated = dropped = 0
        limit = self.max_length
        for enc in encode_bounded(self.tokenizer, texts, limit, special=True):
            e_ids, e_types = enc.ids, enc.type_ids
            if len(e_ids) > limit:
                special = enc.special_tokens_mask
                tail = 0
                while tail < len(special) and special[len(special) - 1 - tail]:
                    tail += 1
                tail = min(tail, limit - 1)
                keep = limit - tail
                truncated += 1
                dropped += len(e_ids) - limit
                e_ids = e_ids[:keep] + (e_ids[-tail:] if tail else [])
                e_types = e_types[:keep] + (e_types[-tail:] if tail else [])
            ids.append(e_ids)
            type_ids.append(e_types)
        clipped = sum(len(t) > self.clip_chars for t in texts)
        if truncated and warn:
            warnings.warn(truncation_message(truncated, dropped, limit, clipped), stacklevel=3)
        return Encoded(ids, type_ids, truncated, dropped, clipped)


def truncation_message(truncated: int, dropped: int, max_length: int, clipped: int = 0) -> str:
    """'3 text(s) longer than max_length 512 were truncated: 40 token(s) dropped' ('at least'
    when a text was tokenised from a prefix only)."""
    least = "at least " if clipped else ""
    return (
        f"{truncated} text(s) longer than max_length {max_length} were truncated: "
        f"{least}{dropped} token(s) dropped"
    )


def pad_right(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest row: (ids int64 [B, S], mask int64 [B, S])."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask
