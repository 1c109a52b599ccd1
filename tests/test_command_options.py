"""commands/options.from_args: an options dataclass from the parsed command line, field by
field, checked against the options written out by hand."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import pytest

from qexport.cli import _parser
from qexport.commands.options import from_args
from qexport.server.config import ServerConfig


def test_serve_arguments_fill_every_server_config_field_they_name() -> None:
    parser, _ = _parser()
    args = parser.parse_args(
        ["serve", "art", "--model-name", "m", "--max-wait-ms", "7", "--max-queue", "3",
         "--max-items", "9", "--max-request-tokens", "99", "--max-body-bytes", "1234",
         "--request-timeout-s", "12", "--read-timeout-s", "4", "--max-batch-tokens", "512"]
    )  # fmt: skip
    # --model-name (= --name) names each served artifact (args.names, passed per model to
    # create_app), not the one config: several artifacts share a ServerConfig
    assert args.names == ["m"]
    got = from_args(ServerConfig, args, api_key="k", metrics=False)
    want = ServerConfig(
        model_name=None, max_wait_ms=7.0, max_queue=3, max_items=9, max_request_tokens=99,
        max_body_bytes=1234, api_key="k", request_timeout_s=12.0, read_timeout_s=4.0,
        metrics=False,
    )  # fmt: skip
    assert asdict(got) == asdict(want)  # long_row_tokens: no such argument, default kept


def test_given_fields_win_and_unknown_ones_are_refused() -> None:
    args = argparse.Namespace(max_queue=5, model_name="from-args", unrelated=1)
    assert from_args(ServerConfig, args, model_name="given").model_name == "given"
    assert from_args(ServerConfig, args).max_queue == 5
    with pytest.raises(TypeError, match="no field"):
        from_args(ServerConfig, args, max_qeue=1)
