"""Tokenisation with the `tokenizers` library, for every task: template, truncation that keeps
the appended end token(s) or the manifest's prompt suffix last, memory bounded by max_length and
by a token limit, right padding."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
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
GROUP_BYTES = 256 << 10  # texts tokenised together past a token limit, at most this many bytes


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

    def __init__(self, tokens: int, limit: int, what: str = "the texts") -> None:
        super().__init__(f"{what} have at least {tokens} tokens; at most {limit}")
        self.tokens, self.limit = tokens, limit


def utf8_lengths(texts: list[str], name: str = "texts") -> list[int]:
    """UTF-8 byte length of each text; ValueError naming the first one that has none."""
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(len(t) if t.isascii() else len(t.encode("utf-8")))
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name}[{i}] is not valid Unicode: {exc.reason} at character {exc.start} "
                "(a lone UTF-16 surrogate such as \\ud800?)"
            ) from None
    return out


def encode_bounded(
    tokenizer: Tokenizer, texts: list[str], keep: int, *, special: bool, offsets: bool = False
) -> list[Any]:
    """`tokenizers` encodings of `texts` whose first `keep` ids are exactly those of the whole
    text, with memory bounded by `keep`, not by the text: a text longer than
    `CLIP_CHARS_PER_TOKEN * (keep + MARGIN)` characters is tokenised from growing prefixes
    (4x each time) until one holds `keep + MARGIN` tokens, and the rest is never tokenised (the
    margin keeps the kept ids equal to those of the whole text; byte-level BPE and WordPiece
    give at least one character per token). Shorter texts go through one batch call (character
    `offsets` only when asked: they cost time). The one bounded tokeniser of the runtime
    (`TextEncoder`: texts, query-document pairs, the server's requests; Cohere's
    `max_tokens_per_doc`)."""
    need = keep + MARGIN
    clip = CLIP_CHARS_PER_TOKEN * need
    short = [t for t in texts if len(t) <= clip]
    try:
        batch = tokenizer.encode_batch if offsets else tokenizer.encode_batch_fast
        encs = iter(batch(short, add_special_tokens=special))
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
    """A task's token rows from its texts, the runtime's one tokeniser: `encode` truncates
    each text to `max_length` keeping what must stay last, with memory bounded by the limits.

    Without `prompt` the tokenizer adds its own special tokens and the trailing ones survive
    truncation (an embedding model's EOS / [SEP]). With `prompt` (prefix ids, suffix ids: the
    reranker's manifest prompt) each text is tokenised without special tokens, cut to the room
    between prefix and suffix from its end, and wrapped in them (the model card's
    `truncation='longest_first'` on one sequence)."""

    def __init__(
        self,
        folder: Path,
        max_length: int,
        template: str | None,
        *,
        fields: tuple[str, ...] = ("instruction", "text"),
        template_name: str = "instruction_template",
        prompt: tuple[list[int], list[int]] | None = None,
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
            None if template is None else check_template(template, fields, template_name)
        )
        self.prefix, self.suffix = prompt if prompt is not None else ([], [])
        self.special = prompt is None  # the tokenizer's own special tokens
        if self.body_budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room between prefix and suffix")
        # tokens a text gets beyond one per byte at most (`upper_bound`)
        self.extra = len(self.prefix) + len(self.suffix)
        self.extra += len(self.tokenizer.encode("", add_special_tokens=self.special).ids)

    @property
    def body_budget(self) -> int:
        """Tokens a text may keep: max_length less the prompt's prefix and suffix."""
        return self.max_length - len(self.prefix) - len(self.suffix)

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
        return CLIP_CHARS_PER_TOKEN * (self.body_budget + MARGIN)

    def upper_bound(self, nbytes: int) -> int:
        """At most this many tokens in the row of a text of `nbytes` UTF-8 bytes (byte-level
        BPE has at least one byte per token, WordPiece at least one character)."""
        return min(nbytes + self.extra, self.max_length)

    def encode(
        self,
        texts: list[str],
        *,
        warn: bool = True,
        max_tokens: int | None = None,
        name: str = "texts",
    ) -> Encoded:
        """Token rows of `texts`. With `max_tokens`, the rows may hold at most that many tokens
        in all (`TokenLimitError`), counted while tokenising: when the bytes' upper bound
        passes the limit, texts are tokenised in groups of `GROUP_BYTES` and counting stops at
        the first group past it, so a request is never tokenised whole first."""
        out = Encoded([], [], 0, 0)
        nbytes = utf8_lengths(texts, name) if max_tokens is not None else []
        if max_tokens is None or sum(map(self.upper_bound, nbytes)) <= max_tokens:
            groups: Any = [range(len(texts))]
        else:
            groups = _groups(texts, nbytes, self.clip_chars)
        total = 0
        for group in groups:
            done = len(out.ids)
            self._encode_into(out, [texts[i] for i in group])
            total += sum(map(len, out.ids[done:]))
            if max_tokens is not None and total > max_tokens:
                raise TokenLimitError(total, max_tokens, name)
        out.clipped = sum(len(t) > self.clip_chars for t in texts)
        if out.truncated and warn:
            msg = truncation_message(out.truncated, out.dropped, self.max_length, out.clipped)
            warnings.warn(msg, stacklevel=3)
        return out

    def _encode_into(self, out: Encoded, texts: list[str]) -> None:
        limit, pre, suf = self.body_budget, self.prefix, self.suffix
        for enc in encode_bounded(self.tokenizer, texts, limit, special=self.special):
            ids, types = enc.ids, enc.type_ids
            if len(ids) > limit:
                tail = _special_tail(enc.special_tokens_mask, limit) if self.special else 0
                keep = limit - tail
                out.truncated += 1
                out.dropped += len(ids) - limit
                ids = ids[:keep] + (ids[-tail:] if tail else [])
                types = types[:keep] + (types[-tail:] if tail else [])
            out.ids.append(pre + ids + suf if pre or suf else ids)
            out.type_ids.append([0] * len(pre) + types + [0] * len(suf) if pre or suf else types)


def _special_tail(mask: list[int], limit: int) -> int:
    """How many special tokens end the row (kept by truncation), at most limit - 1."""
    tail = 0
    while tail < len(mask) and mask[len(mask) - 1 - tail]:
        tail += 1
    return min(tail, limit - 1)


def _groups(texts: list[str], nbytes: list[int], clip: int) -> Iterator[list[int]]:
    """Indices of `texts` in groups of at most `GROUP_BYTES` bytes; a text tokenised from a
    prefix only (longer than `clip` characters) goes alone."""
    group: list[int] = []
    size = 0
    for i, n in enumerate(nbytes):
        alone = len(texts[i]) > clip
        if group and (alone or size + n > GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(i)
        size += n
        if alone:
            yield group
            group, size = [], 0
    if group:
        yield group


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
