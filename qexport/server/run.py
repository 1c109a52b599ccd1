"""Run the app with uvicorn on a socket bound here first (a port in use or a bad host is one
ValueError, not uvicorn's log), with guards against idle and half-sent connections:

- a connection that has not sent a complete request head within `header_timeout_s` of
  opening (or of its previous response) is closed; a slow body is the app's 408;
- connections beyond `max_connections` are closed as soon as they are accepted;
- the soft open-files limit is raised to the hard one, and asyncio's "out of system
  resource" accept error is logged once a minute at most.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; ValueError in one line when that is impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def exposure_warning(host: str, address: str, api_key: str | None) -> str | None:
    """The warning to print when the server is reachable off this machine without a key."""
    if api_key is not None or ipaddress.ip_address(address).is_loopback:
        return None
    return (
        f"qexport: warning: serving on {host} without --api-key: anyone who can reach this "
        "port can use the model"
    )


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a connection cap."""

    header_timeout_s = 10.0
    max_connections = 1024
    _head_timer: asyncio.TimerHandle | None = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expire(self) -> None:
        if self._waiting_for_head() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_head():
            self._disarm()  # a request is being served: the app's timeouts apply

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    attrs = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type("GuardedH11", (GuardedH11,), attrs)


class _OncePerMinute(logging.Filter):
    """asyncio logs every failed accept() when out of file descriptors: keep one a minute."""

    def __init__(self) -> None:
        super().__init__()
        self.last = -1e9

    def filter(self, record: logging.LogRecord) -> bool:
        if "out of system resource" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self.last < 60:
            return False
        self.last = now
        record.exc_info = None
        return True


def raise_open_files_limit() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(
    app: Any,
    sock: socket.socket,
    *,
    header_timeout_s: float = 10.0,
    max_connections: int = 1024,
    log_level: str = "info",
) -> None:
    raise_open_files_limit()
    logging.getLogger("asyncio").addFilter(_OncePerMinute())
    config = uvicorn.Config(
        app,
        http=guarded_protocol(header_timeout_s, max_connections),
        lifespan="on",
        log_level=log_level,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 << 10,
    )
    uvicorn.Server(config).run(sockets=[sock])
