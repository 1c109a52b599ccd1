"""Tokenisation with the `tokenizers` library: prompt template, truncation that keeps the
appended end token(s) last, right padding."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


@dataclass
class Encoded:
    ids: list[list[int]]
    type_ids: list[list[int]]
    truncated: int  # texts that were cut
    dropped: int  # tokens dropped in all


def check_text(text: object, where: str) -> None:
    """Refuse what the tokenizer cannot take, naming it: a non-string, or a string that is
    not valid Unicode (lone surrogates such as "a\\ud800b", which UTF-8 cannot encode).
    ASCII strings are accepted at once (str.isascii reads a flag); others are encoded once."""
    if not isinstance(text, str):
        raise ValueError(f"{where} is {type(text).__name__}, not str")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} is not valid Unicode: {exc.reason} {text[exc.start]!r} at character "
            f"{exc.start}"
        ) from None


def check_texts(texts: list[str]) -> None:
    """check_text for each: ValueError naming `texts[i]`."""
    for i, text in enumerate(texts):
        check_text(text, f"texts[{i}]")


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
        self.template = template

    def format(self, texts: list[str], instruction: str | None) -> list[str]:
        if instruction is None:
            return texts
        check_text(instruction, "instruction")
        if self.template is None:
            raise ValueError("this model has no instruction template; embed without instruction")
        return [self.template.format(instruction=instruction, text=t) for t in texts]

    def encode(self, texts: list[str], *, warn: bool = True) -> Encoded:
        try:
            encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=True)
        except TypeError:  # tokenizers says neither which text nor why
            check_texts(texts)
            raise
        ids, type_ids = [], []
        truncated = dropped = 0
        limit = self.max_length
        for enc in encodings:
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
        if truncated and warn:
            warnings.warn(
                f"{truncated} text(s) longer than max_length {limit} were truncated: "
                f"{dropped} token(s) dropped",
                stacklevel=3,
            )
        return Encoded(ids, type_ids, truncated, dropped)


def pad_right(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest row: (ids int64 [B, S], mask int64 [B, S])."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask
