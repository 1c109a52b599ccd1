"""The report page shared by the embedding and the reranker validation reports: a report is a
list of `Section`s (title, text lines, tables) rendered as Markdown and as one HTML page, and
written as report.json, report.md and report.html."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Table = tuple[list[str], list[list[Any]]]

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}.pass{color:#137333;font-weight:bold}
.fail{color:#c5221f;font-weight:bold}.verdict-fail{background:#fce8e6}.verdict-pass{background:#e6f4ea}
img{max-width:100%;border:1px solid #ddd;margin:4px}code{background:#f3f3f3}
"""


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def fmt(v: Any, digits: int = 8) -> str:
    """A report cell: – for None, yes/no, floats to `digits` places (scientific when tiny or
    huge, trailing zeros dropped)."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{v:.0f}"
    return str(v)


def short(text: str, n: int = 60) -> str:
    """One line of at most `n` characters (newlines shown as \\n, … where cut)."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 1] + "…"


def inline_md(text: str) -> str:
    """Escape, then the two Markdown marks the sections use: **bold** and `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def markdown(heading: str, sections: Sequence[Section], footer: Sequence[str] = ()) -> str:
    """`# heading`, then each section as `## title`, its lines and its tables."""
    lines = [f"# {heading}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for line in s.lines:
            lines += [line, ""]
        for head, rows in s.tables:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for row in rows:
                lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
            lines.append("")
    lines += footer
    return "\n".join(lines) + "\n"


def _section_html(s: Section) -> list[str]:
    body = [f"<h2>{html.escape(s.title)}</h2>"]
    body += [f"<p>{inline_md(line.removeprefix('- '))}</p>" for line in s.lines]
    for head, rows in s.tables:
        body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for row in rows:
            cells = [
                f"<td class='{ {'PASS': 'pass', 'FAIL': 'fail'}.get(str(c), '') }'>"
                f"{html.escape(str(c))}</td>"
                for c in row
            ]
            body.append("<tr>" + "".join(cells) + "</tr>")
        body.append("</table>")
    return body


def html_page(
    heading: str, verdict: str, sections: Sequence[Section], after_first: Sequence[str] = ()
) -> str:
    """One self-contained page titled `heading`: `heading: VERDICT` on top (coloured by the
    verdict), the sections, and `after_first` (HTML) after the first section."""
    body = [f"<h1 class='verdict-{verdict}'>{heading}: {verdict.upper()}</h1>"]
    for i, s in enumerate(sections):
        body += _section_html(s)
        if i == 0:
            body += after_first
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{heading}"
        f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_files(r: dict[str, Any], folder: str | Path, md: str, page: str) -> dict[str, Path]:
    """Write report.json (`r`), report.md and report.html into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"report.{k}" for k in ("json", "md", "html")}
    paths["json"].write_text(
        json.dumps(r, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    paths["md"].write_text(md, encoding="utf-8")
    paths["html"].write_text(page, encoding="utf-8")
    return paths
