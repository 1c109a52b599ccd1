"""Bearer-token auth as a pure ASGI middleware: runs before any body is read."""

from __future__ import annotations

import hmac
from typing import Any

from .errors import send_error

OPEN_PATHS = frozenset({"/health"})  # for load balancers: no secrets, no work


class AuthMiddleware:
    def __init__(self, app: Any, api_key: str, on_refuse: Any) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.on_refuse = on_refuse

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        self.on_refuse("unauthorized")
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if not given
            else "invalid API key"
        )
        await send_error(send, 401, message, {"www-authenticate": "Bearer"})
