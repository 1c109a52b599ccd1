"""Write a validation report (the dict from `suite.run_validation`) as report.json,
report.md and report.html (plots embedded as base64 PNG).

Markdown and HTML render the same sections (`sections`); the plots are matplotlib figures:
the per-text cosine distance histogram, throughput vs length and peak memory vs length.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# plot colours (matplotlib's tab10 blue and orange): onnxruntime, PyTorch
COLORS = {"onnxruntime": "#1f77b4", "pytorch": "#ff7f0e"}


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)


def _worst_table(first: str, worst: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The worst texts of a fidelity check as a table: index, cosine, diff, tokens, text."""
    header = [first, "cosine", "max abs diff", "tokens", "text"]
    rows = [
        [w["index"], _fmt(w["cosine"]), _fmt(w["max_abs_diff"]), w["tokens"], _short(w["text"])]
        for w in worst
    ]
    return header, rows


def _fmt(v: Any, digits: int = 8) -> str:
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


def _short(text: str, n: int = 60) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 1] + "…"


def sections(r: dict[str, Any]) -> list[Section]:
    out = []
    a = r["artifact"]
    head = Section("Summary")
    verdict = r["verdict"].upper()
    failed = ", ".join(r["failed"]) if r["failed"] else "none"
    head.lines += [
        f"**Verdict: {verdict}** (failed checks: {failed})",
        f"Artifact `{a['path']}` ({a['precision']}, dim {a['embedding_dim']}, max length "
        f"{a['max_length']}, pooling {a['pooling']}), from `{a['source'].get('model')}`; "
        f"reference `{r['reference']['model']}` in PyTorch ({r['reference']['dtype']}, "
        f"{r['reference']['device']}). Texts: {r['texts']['count']} ({r['texts']['source']}). "
        f"Created {r['created']}, report schema {r['schema']} v{r['schema_version']}.",
    ]
    rows = [
        [
            c["name"],
            c["status"].upper(),
            _fmt(c["value"]),
            f"{c['comparison']} {_fmt(c['threshold'])}" if c["threshold"] is not None else "–",
            c["meaning"],
        ]
        for c in r["checks"]
    ]
    head.tables.append((["check", "status", "value", "threshold", "what"], rows))
    out.append(head)
    for c in r["checks"]:
        if c["status"] == "fail":
            out.append(_failure(c))

    f = r["fidelity"]
    pt = f["per_text"]
    s = Section("Fidelity")
    s.lines.append(
        f"Per-text cosine against the reference over {pt['texts']} texts: min "
        f"{_fmt(pt['cosine_min'])}, 1st percentile {_fmt(pt['cosine_p1'])}, mean "
        f"{_fmt(pt['cosine_mean'])}; max abs diff {_fmt(pt['max_abs_diff'])}; "
        f"non-finite embeddings: {pt['nonfinite']}."
    )
    s.tables.append(_worst_table("worst texts", pt["worst"]))
    rows = []
    for name, key in (
        ("batched vs alone", "batch_vs_single"),
        ("padded among long texts", "padding"),
        ("instruction path (queries)", "instruction"),
    ):
        sec = f[key]
        if "skipped" in sec:
            rows.append([name, "skipped", "–", sec["skipped"]])
            continue
        extra = {
            "batch_vs_single": f"batch size {sec.get('batch_size')}; worst: {_short(sec.get('worst_text', ''), 40)}",
            "padding": f"{sec.get('texts')} shortest texts padded to {sec.get('padded_to_tokens')} tokens",
            "instruction": f"{_short(sec.get('instruction', ''), 50)}; cos(with, without) mean "
            f"{_fmt(sec.get('cosine_with_vs_without_instruction_mean'))}",
        }[key]
        rows.append([name, _fmt(sec["cosine_min"]), _fmt(sec.get("max_abs_diff")), extra])
    s.tables.append((["consistency", "cosine min", "max abs diff", "detail"], rows))
    m = f["matryoshka"]
    if "skipped" not in m and m["dims"]:
        s.tables.append(
            (
                ["Matryoshka dim", "cosine min", "cosine mean"],
                [[d, _fmt(v["cosine_min"]), _fmt(v["cosine_mean"])] for d, v in m["dims"].items()],
            )
        )
    ka = f["known_answer"]
    if "skipped" in ka:
        s.lines.append(f"Known-answer check (model card scores): not run — {ka['skipped']}.")
    else:
        s.lines.append(
            f"Known-answer check ({ka['model']} card, queries x documents): scores "
            f"{ka['scores']} vs published {ka['expected']}; max error {_fmt(ka['max_error'])}."
        )
    out.append(s)

    rt = r.get("retrieval")
    if rt:
        s = Section(f"Retrieval agreement: {rt['dataset']}")
        sub = rt["subsampled"]
        s.lines.append(
            f"{rt['queries']} queries, {rt['corpus']} documents"
            + (f" (SUBSAMPLED: {subsample_text(sub)})" if sub else " (full set)")
            + f"; query instruction: {rt['query_instruction']!r}; max length {rt['max_length']}."
        )
        pub = rt["published"]
        s.tables.append(
            (
                ["engine", "nDCG@10", "Recall@100"],
                [
                    [
                        "onnxruntime (artifact)",
                        _fmt(rt["onnxruntime"]["ndcg@10"], 5),
                        _fmt(rt["onnxruntime"]["recall@100"], 5),
                    ],
                    [
                        "PyTorch (reference)",
                        _fmt(rt["pytorch"]["ndcg@10"], 5),
                        _fmt(rt["pytorch"]["recall@100"], 5),
                    ],
                    ["published", _fmt(pub["ndcg@10"], 5), "–"],
                ],
            )
        )
        s.lines.append(
            f"Mean top-10 overlap per query: {_fmt(rt['top10_overlap_mean'], 4)} (lowest "
            f"{_fmt(rt['top10_overlap_min'], 2)}); nDCG@10 drop {_fmt(rt['ndcg10_drop'])}."
            + (f" Published score: {pub['note']}." if pub["ndcg@10"] is not None else "")
        )
        out.append(s)

    sp = r.get("speed")
    if sp:
        s = Section("Speed and memory")
        engines = list(sp["engines"])
        s.lines.append(
            f"Device {sp['device']}; {sp['texts']}; {sp['warmup']} warm-up call(s) excluded, "
            f"median of {sp['repeats']} timed calls per cell; each engine in its own process. "
            "Peak RSS per length: the engine process's high-water mark over the cells of that "
            "length (model weights included); 'after load': the mark once the model is loaded."
        )
        cols = ["batch", "length"]
        for e in engines:
            cols += [f"{e} tok/s", f"{e} p50 ms", f"{e} p95 ms"]
        cols += ["speedup"]
        rows = []
        for g in sp["grid"]:
            row: list[Any] = [g["batch_size"], g["length"]]
            for e in engines:
                row += [
                    _fmt(g[e]["tokens_per_s"], 0),
                    _fmt(g[e]["latency_p50_ms"], 2),
                    _fmt(g[e]["latency_p95_ms"], 2),
                ]
            row.append(f"{g['speedup']:.2f}x" if "speedup" in g else "–")
            rows.append(row)
        s.tables.append((cols, rows))
        mem_rows = []
        for e in engines:
            load = sp["engines"][e]
            per_len = _memory_by_length(sp, e)
            mem_rows.append(
                [e, _fmt(load.get("rss_peak_mb"), 0)]
                + [_fmt(per_len[n]["rss"], 0) for n in sp["lengths"]]
            )
        s.tables.append(
            (["peak RSS MB", "after load"] + [f"L={n}" for n in sp["lengths"]], mem_rows)
        )
        if any(
            _memory_by_length(sp, e)[n]["gpu"] is not None for e in engines for n in sp["lengths"]
        ):
            s.tables.append(
                (
                    ["peak GPU MB"] + [f"L={n}" for n in sp["lengths"]],
                    [
                        [e] + [_fmt(_memory_by_length(sp, e)[n]["gpu"], 0) for n in sp["lengths"]]
                        for e in engines
                    ],
                )
            )
        if sp.get("gpu_peak_flops"):
            s.tables.append(
                (
                    ["batch", "length"] + [f"{e} MFU" for e in engines],
                    [
                        [g["batch_size"], g["length"]] + [_fmt(g[e].get("mfu"), 4) for e in engines]
                        for g in sp["grid"]
                    ],
                )
            )
        else:
            s.lines.append(f"MFU: not computed ({sp['mfu_note']}).")
        s.lines += list(sp.get("notes", []))
        for e in engines:
            note = sp["engines"][e].get("note")
            if note:
                s.lines.append(f"{e}: {note}")
        out.append(s)

    env = r["environment"]
    s = Section("Environment")
    s.tables.append(
        (
            ["item", "value"],
            [
                ["CPU", f"{env['cpu']} ({env['cpu_count']} logical cores)"],
                ["memory", f"{_fmt(env['memory_gb'], 1)} GiB"],
                ["GPU", ", ".join(env["gpus"]) or "none"],
                ["python / platform", f"{env['python']} / {env['platform']}"],
                ["onnxruntime providers used", ", ".join(env["onnxruntime_providers_used"])],
                [
                    "onnxruntime providers available",
                    ", ".join(env["onnxruntime_available_providers"]),
                ],
                ["reference device", env["reference_device"]],
                ["libraries", ", ".join(f"{k} {v}" for k, v in env["libraries"].items())],
            ],
        )
    )
    out.append(s)
    if r["notes"]:
        out.append(Section("Notes", lines=[f"- {n}" for n in r["notes"]]))
    return out


def subsample_text(sub: dict[str, int]) -> str:
    parts = []
    if "corpus_total" in sub:
        parts.append(
            f"corpus {sub['corpus_kept']} of {sub['corpus_total']} documents, every one of the "
            f"{sub['relevant_kept']} relevant documents kept"
        )
    if "queries_total" in sub:
        parts.append(f"queries {sub['queries_kept']} of {sub['queries_total']}")
    return "; ".join(parts)


def _failure(c: dict[str, Any]) -> Section:
    s = Section(f"FAILED: {c['name']}")
    s.lines.append(
        f"{c['meaning']}: {_fmt(c['value'])}, required {c['comparison']} {_fmt(c['threshold'])}."
    )
    d = c.get("detail")
    if isinstance(d, dict) and "worst_texts" in d:
        s.tables.append(_worst_table("index", d["worst_texts"]))
    elif isinstance(d, dict) and "worst_queries" in d:
        s.tables.append(
            (
                ["query", "top-10 overlap", "text"],
                [
                    [q["query_id"], _fmt(q["overlap"], 2), _short(q["text"])]
                    for q in d["worst_queries"]
                ],
            )
        )
    elif d:
        s.lines.append(f"Detail: {json.dumps(d, ensure_ascii=False)}")
    return s


def _floats(values: Any) -> list[float]:
    """None (not measured) as NaN, which matplotlib leaves out of a line."""
    return [float("nan") if v is None else float(v) for v in values]


def _memory_by_length(sp: dict[str, Any], engine: str) -> dict[int, dict[str, float | None]]:
    out: dict[int, dict[str, float | None]] = {}
    for g in sp["grid"]:
        cell = g[engine]
        prev = out.get(g["length"], {"rss": None, "gpu": None})
        out[g["length"]] = {
            "rss": max(x for x in (prev["rss"], cell["rss_peak_mb"]) if x is not None)
            if cell["rss_peak_mb"] is not None
            else prev["rss"],
            "gpu": max(x for x in (prev["gpu"], cell["gpu_peak_mb"]) if x is not None)
            if cell["gpu_peak_mb"] is not None
            else prev["gpu"],
        }
    return out


# ----------------------------------------------------------------------------- plots


def plots(r: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by name: cosine histogram, and with a speed run throughput and memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = {}

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        return buf.getvalue()

    cos = np.array([c for c in r["fidelity"]["per_text"]["cosines"] if c is not None], dtype=float)
    if cos.size:
        dist = np.clip(1.0 - cos, 1e-9, None)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        lo = min(dist.min(), 1e-8)
        hi = max(dist.max(), 1 - (r["thresholds"].get("cosine_min") or 0.9999)) * 2
        bins = np.logspace(np.log10(lo), np.log10(hi), 30)
        ax.hist(dist, bins=bins.tolist(), color=COLORS["onnxruntime"], edgecolor="white")
        thr = r["thresholds"].get("cosine_min")
        if thr is not None:
            ax.axvline(1 - thr, color="#d62728", linestyle="--", label=f"threshold (cos {thr})")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("1 − cosine (artifact vs PyTorch), per text; clipped at 1e-9")
        ax.set_ylabel("texts")
        ax.set_title("Per-text cosine distance")
        out["cosine_histogram"] = png(fig)

    sp = r.get("speed")
    if sp:
        engines = list(sp["engines"])
        fig, ax = plt.subplots(figsize=(6, 3.4))
        styles = ["-", "--", ":", "-."]
        for e in engines:
            for j, b in enumerate(sp["batch_sizes"]):
                cells = [g for g in sp["grid"] if g["batch_size"] == b]
                ax.plot(
                    [g["length"] for g in cells],
                    [g[e]["tokens_per_s"] for g in cells],
                    marker="o",
                    linestyle=styles[j % len(styles)],
                    color=COLORS.get(e),
                    label=f"{e}, batch {b}",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per text")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"Throughput ({sp['device']}, median of {sp['repeats']})")
        ax.legend(fontsize=7)
        out["throughput_vs_length"] = png(fig)

        fig, ax = plt.subplots(figsize=(6, 3.4))
        for e in engines:
            mem = _memory_by_length(sp, e)
            ax.plot(
                sp["lengths"],
                _floats(mem[n]["rss"] for n in sp["lengths"]),
                marker="o",
                color=COLORS.get(e),
                label=f"{e} peak RSS",
            )
            if any(mem[n]["gpu"] is not None for n in sp["lengths"]):
                ax.plot(
                    sp["lengths"],
                    _floats(mem[n]["gpu"] for n in sp["lengths"]),
                    marker="s",
                    linestyle="--",
                    color=COLORS.get(e),
                    label=f"{e} peak GPU",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per text (largest batch so far)")
        ax.set_ylabel("MB")
        ax.set_title("Peak memory vs length")
        ax.legend(fontsize=7)
        out["memory_vs_length"] = png(fig)
    return out


# ----------------------------------------------------------------------------- writers


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# qexport validation report: {r['verdict'].upper()}", ""]
    for s in sections(r):
        lines += [f"## {s.title}", ""]
        for line in s.lines:
            lines += [line, ""]
        for head, rows in s.tables:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for row in rows:
                cells = [str(c).replace("|", "\\|") for c in row]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    lines.append("Plots (cosine histogram, throughput and memory vs length): report.html.")
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:left}th{background:#f3f3f3}.pass{color:#137333;font-weight:bold}
.fail{color:#c5221f;font-weight:bold}.verdict-fail{background:#fce8e6}.verdict-pass{background:#e6f4ea}
img{max-width:100%;border:1px solid #ddd;margin:4px}code{background:#f3f3f3}
"""


def _inline_md(text: str) -> str:
    """Escape, then the two Markdown marks the sections use: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def to_html(r: dict[str, Any], images: dict[str, bytes]) -> str:
    body = [
        f"<h1 class='verdict-{r['verdict']}'>qexport validation report: {r['verdict'].upper()}</h1>"
    ]
    for i, s in enumerate(sections(r)):
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for line in s.lines:
            body.append(f"<p>{_inline_md(line.removeprefix('- '))}</p>")
        for head, rows in s.tables:
            body.append(
                "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            )
            for row in rows:
                cells = []
                for c in row:
                    cls = {"PASS": "pass", "FAIL": "fail"}.get(str(c), "")
                    cells.append(f"<td class='{cls}'>{html.escape(str(c))}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            body.append("</table>")
        if i == 0 and images:
            body.append("<h2>Plots</h2><div id='plots'>")
            for name, data in images.items():
                b64 = base64.b64encode(data).decode("ascii")
                body.append(f"<img id='{name}' alt='{name}' src='data:image/png;base64,{b64}'>")
            body.append("</div>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>qexport validation report"
        f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(r: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"report.{k}" for k in ("json", "md", "html")}
    paths["json"].write_text(
        json.dumps(r, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    paths["md"].write_text(to_markdown(r), encoding="utf-8")
    paths["html"].write_text(to_html(r, plots(r)), encoding="utf-8")
    return paths
