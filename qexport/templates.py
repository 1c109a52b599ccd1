"""Prompt templates from manifests: only their named placeholders, nothing else.

A manifest's `instruction_template` ("{instruction}", "{text}"), the reranker's body template
("{instruction}", "{query}", "{doc}") and document prompts go through `str.format`. A format
spec (`{instruction:>20000000}`: 3 GB for one query), a conversion (`{text!r}`), attribute or
index access (`{doc.__class__}`, `{text[0]}`) or an unknown name would run inside the runtime,
so `check_template` refuses all of them when the artifact is loaded (`manifest_checks` turns
its TemplateError into a TemplateError: one line, exit 2). The standard library only.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

MAX_TEMPLATE_CHARS = 1 << 16


class TemplateError(ValueError):
    """A template that holds more than its named placeholders."""


def check_template(template: object, fields: Iterable[str], what: str) -> str:
    """`template` if it is a string whose replacement fields are all plain `{name}`s with a
    name from `fields`; TemplateError naming `what` otherwise."""
    allowed = set(fields)
    if not isinstance(template, str):
        raise TemplateError(f"{what} must be a string, got {type(template).__name__}")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"{what} is longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone brace
        raise TemplateError(f"{what} is not a usable template ({exc})") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            shown = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (":" + spec if spec else "")
                + "}"
            )
            raise TemplateError(
                f"{what} may hold only the placeholders "
                f"{', '.join('{' + f + '}' for f in sorted(allowed))}; it has {shown[:80]!r}"
            )
    return template
