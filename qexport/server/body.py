"""A request body, read and checked before any task sees it: counted while it arrives (413 as
soon as it passes the limit, chunked bodies too; 408 when it does not arrive in time), its
strings counted before a large one is parsed (413), then parsed into the route's pydantic
model (400 bad UTF-8 or JSON, 422 bad fields)."""

from __future__ import annotations

import asyncio
import json
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


# a JSON string token; counted in large bodies before parsing (json.loads of millions of
# tiny strings costs ~13x the body: 8 MiB of `"ab",` -> 103 MB)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # ~40 ms per MiB
SCAN_ABOVE = 1 << 20  # bodies larger than this are scanned, and parsed off the event loop
EXTRA_STRINGS = 64  # field names and values besides the inputs


def _check_string_count(body: bytes, max_items: int) -> None:
    if len(body) <= SCAN_ABOVE:
        return
    limit = max_items + EXTRA_STRINGS
    for n, _ in enumerate(_JSON_STRING.finditer(body), 1):
        if n > limit:
            raise ApiError(
                413,
                f"request body holds more than {limit} strings; at most {max_items} inputs "
                "per request",
                "input",
                reason="too_many_items",
            )


def parse_request(body: bytes, max_items: int, model: type[Any]) -> Any:
    """The body as `model` (a pydantic model): 400 for bad UTF-8 or JSON, 422 for bad fields."""
    _check_string_count(body, max_items)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"request body is not valid UTF-8 (byte {exc.start})", reason="bad_body"
        ) from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON", reason="bad_body") from None
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
