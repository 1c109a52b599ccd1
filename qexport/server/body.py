"""A request body, read and checked before any task sees it: counted while it arrives (413 as
soon as it passes the limit, chunked bodies too; 408 when it does not arrive in time), its JSON
values and nesting counted before it is parsed (413 more values than a request of `max_items`
inputs holds, 400 deeper than a request nests), then parsed into the route's pydantic model
(400 bad UTF-8 or JSON, huge numbers and NaN included, 422 bad fields)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from .config import ServerConfig
from .errors import ApiError


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


async def _receive_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected", reason="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, f"request body passed {limit} bytes; at most {limit}", reason="body_too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_body(request: Request, cfg: ServerConfig) -> bytes:
    """The body, counted while it arrives: 413 as soon as it passes the limit (chunked too),
    408 when it has not all arrived within the read timeout."""
    limit = cfg.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(
            413, f"request body has {length} bytes; at most {limit}", reason="body_too_large"
        )
    try:
        return await asyncio.wait_for(_receive_body(request, limit), cfg.read_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"request body not received within {cfg.read_timeout_s:g} s", reason="read_timeout"
        ) from None


# What json.loads builds is bounded before it runs: a legal request holds its inputs (a string,
# or an object such as {"text": ...}: at most VALUES_PER_ITEM values each) and a few fields,
# so the JSON values of every type (strings, keys included, numbers, literals, arrays,
# objects) are counted first. Unbounded, 60 MiB of `[],` grew the server by 1.6 GB and 8 MiB
# of `"ab",` by 100 MB. In JSON every value but the first follows a `,` `:` `[` or `{`
# outside a string, so 1 + their count bounds the values (and what a parser builds before it
# meets an error); those inside strings are subtracted, string by string (~30 ms per MiB of
# text), and the scan stops at the limit.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
SCAN_ABOVE = 1 << 20  # bodies larger than this are parsed off the event loop
VALUES_PER_ITEM = 4  # an input: a string, or {"text": "..."} (object, key, value)
EXTRA_VALUES = 256  # the fields of a request and ignored extras, keys and values
MAX_DEPTH = 16  # legal requests nest 3 deep; json.loads recurses once per level
MAX_INT_DIGITS = 4300  # Python's own limit for int(str): the digits a JSON integer may have


def max_values(max_items: int) -> int:
    return max_items * VALUES_PER_ITEM + EXTRA_VALUES


def _separators(text: bytes, start: int = 0, end: int | None = None) -> int:
    return sum(text.count(c, start, end) for c in (b",", b":", b"[", b"{"))


def _too_many(limit: int, max_items: int) -> ApiError:
    return ApiError(
        413,
        f"request body holds more than {limit} JSON values; at most {max_items} inputs per request",
        "input",
        reason="too_many_items",
    )


def _not_json(why: str) -> ApiError:
    return ApiError(400, f"request body is not valid JSON: {why}", reason="bad_body")


def check_shape(body: bytes, max_items: int) -> None:
    """413 when parsing `body` could build more JSON values than a request of `max_items`
    inputs holds, 400 when it nests deeper than MAX_DEPTH; copies nothing."""
    limit = max_values(max_items)
    values = 1 + _separators(body)  # separators inside strings too: subtracted below
    if values <= limit and body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    # every token is a string or a bracket; valid JSON has at most 2 per value
    for n, m in enumerate(_JSON_TOKEN.finditer(body), 1):
        if n > 2 * limit + 1:
            raise _too_many(limit, max_items)
        token = m[0]
        if token[0] == 0x22:  # '"'
            values -= _separators(body, m.start(), m.end())
        elif token in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ApiError(
                    400, f"request body nests deeper than {MAX_DEPTH} levels", reason="bad_body"
                )
        else:
            depth -= 1
    if values > limit:
        raise _too_many(limit, max_items)


def _int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer has {digits} digits; at most {MAX_INT_DIGITS}")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} overflows a float")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_request(body: bytes, max_items: int, model: type[Any]) -> Any:
    """The body as `model` (a pydantic model): 413 more values than a request holds, 400 bad
    UTF-8 or JSON (any parse failure, huge numbers included), 422 for bad fields."""
    check_shape(body, max_items)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"request body is not valid UTF-8 (byte {exc.start})", reason="bad_body"
        ) from None
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise _not_json("nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, and the hooks' refusals
        raise _not_json(str(exc).splitlines()[0][:200]) from None
    del text
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, _validation_message(exc), reason="bad_body") from None


async def read_request(request: Request, cfg: ServerConfig, model: type[Any]) -> Any:
    """The body, read within the limits and parsed as `model` (off the event loop when large)."""
    body = await read_body(request, cfg)
    if len(body) > SCAN_ABOVE:
        return await run_in_threadpool(parse_request, body, cfg.max_items, model)
    return parse_request(body, cfg.max_items, model)


async def until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
