"""Request input: check the items, then tokenise them with the runtime's one tokeniser
(`runtime.tokenize.TextEncoder.encode` with the request's token limit), its errors as 4xx.

Tokenising costs ~125 bytes of RSS per token, so a request is never tokenised whole first:
every text is UTF-8 encoded once (a lone surrogate such as JSON "\\ud800" is refused, naming
the item); `bytes + special tokens`, capped at max_length, bounds its tokens from above; a text
longer than `TextEncoder.clip_chars` characters is tokenised from a prefix only; when the
bound exceeds the limit, texts are tokenised in groups and counting stops at the first group
that passes it (413). tests/server/test_tokens.py checks this for both tokenizer kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..runtime.tokenize import TokenLimitError
from .errors import ApiError


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


@contextmanager
def request_limits(param: str) -> Iterator[None]:
    """Tokenising a request (`TextEncoder.encode` with `max_tokens`): its token limit as 413,
    a text the tokenizer cannot take (a lone surrogate, named by its index) as 400."""
    try:
        yield
    except TokenLimitError as exc:
        raise ApiError(
            413,
            f"{param} has at least {exc.tokens} tokens; at most {exc.limit} per request",
            param,
            reason="too_many_tokens",
        ) from None
    except ValueError as exc:
        raise bad_input(str(exc), param) from None
