"""`qexport` command line: thin; each subcommand lives in `qexport.commands.<name>`.

Usage errors and bad input exit with code 2 and one line on stderr, no traceback
(set QEXPORT_DEBUG=1 to see it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .commands import COMMANDS
from .commands.errors import UsageError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UsageError(message)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    p = _Parser(
        prog="qexport",
        description="Export, quantize, run and validate embedding models with ONNX Runtime.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    modules: dict[str, Any] = {}
    for name in COMMANDS:
        module = importlib.import_module(f"qexport.commands.{name}")
        module.add(sub)
        modules[name] = module
    return p, modules


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser, modules = _parser()
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="qexport: %(message)s",
            stream=sys.stderr,
        )
        return int(modules[args.command].run(args))  # type: ignore[attr-defined]
    except UsageError as exc:
        print(f"qexport: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("qexport: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, NotImplementedError, RuntimeError, ImportError) as exc:
        if os.environ.get("QEXPORT_DEBUG"):
            raise
        # library errors name the problem (SourceError, OutputError, ManifestError, ...)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"qexport: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
