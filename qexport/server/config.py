"""Server options (no heavy imports: `qexport serve` checks them before loading anything)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

KEY_ENV = "QEXPORT_API_KEY"


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key, or None: an empty key would mean no auth, and HTTP strips
    the whitespace around header values, so a key with leading/trailing blanks never matches."""
    if not key:
        return "is empty"
    if key != key.strip():
        return "has leading or trailing whitespace (HTTP strips it: no client could send it)"
    if not (key.isascii() and key.isprintable()):
        return "holds characters an HTTP header cannot carry (printable ASCII only)"
    return None


def api_key(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """The API key from `--api-key`, else from $QEXPORT_API_KEY (set counts, even empty), or
    None (no auth); ValueError naming where the key came from when it is unusable."""
    if flag is not None:
        key, source = flag, "--api-key"
    elif KEY_ENV in environ:
        key, source = environ[KEY_ENV], f"${KEY_ENV}"
    else:
        return None
    problem = key_problem(key)
    if problem:
        raise ValueError(f"{source} {problem}: set a usable key, or unset it for no auth")
    return key


@dataclass
class ServerConfig:
    model_name: str | None = None  # default: the artifact folder's name
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_items: int = 2048
    max_request_tokens: int = 300_000  # OpenAI's cap; 1M tokens grew the server by 258 MB
    max_body_bytes: int = 4 << 20  # 300k tokens: 1.4 MB of English, 3.6 MB of \u-escaped CJK
    api_key: str | None = None  # None: no auth
    request_timeout_s: float = 300.0  # from the request's arrival to its answer
    read_timeout_s: float = 30.0  # to receive the whole body
    long_row_tokens: int = 1024  # wider passes let a second worker run short rows meanwhile
    metrics: bool = True  # GET /metrics and the request counters

    def check(self) -> None:
        """ValueError naming the first option out of range."""
        for name in ("max_queue", "max_items", "max_request_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, top in (
            ("max_wait_ms", 10_000.0),
            ("request_timeout_s", 86_400.0),
            ("read_timeout_s", 86_400.0),
        ):
            value = getattr(self, name)
            low_ok = value >= 0 if name == "max_wait_ms" else value > 0
            if not (math.isfinite(value) and low_ok and value <= top):
                raise ValueError(f"{name} must be a finite number in (0, {top:g}], got {value}")
        if self.api_key is not None and key_problem(self.api_key):
            raise ValueError(f"api_key {key_problem(self.api_key)}")
