"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

# status -> OpenAI-style error type; anything else is invalid_request_error (4xx) or
# server_error (5xx)
KINDS = {
    401: "authentication_error",
    408: "timeout",
    413: "request_too_large",
    503: "server_busy",
    504: "timeout",
}


class ApiError(Exception):
    """A refused request: the handlers raise it, the app answers in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.reason = reason  # label of the refusals metric (None: not counted as a refusal)
        self.headers = headers


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> JSONResponse:
    body = error_body(status, message, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


async def send_error(send: Any, status: int, message: str, headers: dict[str, str]) -> None:
    """Answer from a pure ASGI middleware (before the app ran)."""
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
