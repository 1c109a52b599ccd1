"""Write a validation report (the dict from `suite.run_validation`, any task) as report.json,
report.md and report.html (plots embedded as base64 PNG).

`sections` turns the report into `render.Section`s (summary and failures, the task's own
sections: `TASK_SECTIONS`, speed and memory, environment, notes); `render` writes them as
Markdown and HTML; the plots come from `report_plots`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .render import Section, Table, fmt, html_page, markdown, short, write_files
from .report_plots import memory_by_length, plots

HEADING = "qexport validation report"


def _worst_table(first: str, worst: list[dict[str, Any]]) -> Table:
    """The worst texts of a fidelity check as a table: index, cosine, diff, tokens, text."""
    header = [first, "cosine", "max abs diff", "tokens", "text"]
    rows = [
        [w["index"], fmt(w["cosine"]), fmt(w["max_abs_diff"]), w["tokens"], short(w["text"])]
        for w in worst
    ]
    return header, rows


def sections(r: dict[str, Any]) -> list[Section]:
    """The report's sections in page order; retrieval and speed only when they ran."""
    out = _summary(r)
    out += TASK_SECTIONS[r["task"]](r)
    if r.get("speed"):
        out.append(_speed(r["speed"]))
    out.append(_environment(r["environment"]))
    if r["notes"]:
        out.append(Section("Notes", lines=[f"- {n}" for n in r["notes"]]))
    return out


def _summary(r: dict[str, Any]) -> list[Section]:
    """The verdict, the artifact and reference, every check; then one section per failure."""
    a, ref = r["artifact"], r["reference"]
    head = Section("Summary")
    verdict = r["verdict"].upper()
    failed = ", ".join(r["failed"]) if r["failed"] else "none"
    if r["task"] == "embed":
        shape = f"dim {a['embedding_dim']}, max length {a['max_length']}, pooling {a['pooling']}"
        data = f"Texts: {r['texts']['count']} ({r['texts']['source']})."
    else:
        shape = f"max length {a['max_length']}"
        data = f"Pairs: {r['pairs']['dataset']}."
    recipe = f"{ref['recipe']}, " if ref.get("recipe") else ""
    head.lines += [
        f"**Verdict: {verdict}** (failed checks: {failed})",
        f"Task {r['task']}. Artifact `{a['path']}` ({a['precision']}, {shape}), from "
        f"`{a['source'].get('model')}`; reference `{ref['model']}` in PyTorch ({recipe}"
        f"{ref['dtype']}, {ref['device']}). {data} "
        f"Created {r['created']}, report schema {r['schema']} v{r['schema_version']}.",
    ]
    rows = [
        [
            c["name"],
            c["status"].upper(),
            fmt(c["value"]),
            f"{c['comparison']} {fmt(c['threshold'])}" if c["threshold"] is not None else "–",
            c["meaning"],
        ]
        for c in r["checks"]
    ]
    head.tables.append((["check", "status", "value", "threshold", "what"], rows))
    return [head] + [_failure(c) for c in r["checks"] if c["status"] == "fail"]


def _consistency_row(name: str, key: str, sec: dict[str, Any]) -> list[Any]:
    if "skipped" in sec:
        return [name, "skipped", "–", sec["skipped"]]
    if key == "batch_vs_single":
        extra = f"batch size {sec.get('batch_size')}; worst: {short(sec.get('worst_text', ''), 40)}"
    elif key == "padding":
        extra = f"{sec.get('texts')} shortest texts padded to {sec.get('padded_to_tokens')} tokens"
    else:
        extra = (
            f"{short(sec.get('instruction', ''), 50)}; cos(with, without) mean "
            f"{fmt(sec.get('cosine_with_vs_without_instruction_mean'))}"
        )
    return [name, fmt(sec["cosine_min"]), fmt(sec.get("max_abs_diff")), extra]


def _fidelity(f: dict[str, Any]) -> Section:
    pt = f["per_text"]
    s = Section("Fidelity")
    s.lines.append(
        f"Per-text cosine against the reference over {pt['texts']} texts: min "
        f"{fmt(pt['cosine_min'])}, 1st percentile {fmt(pt['cosine_p1'])}, mean "
        f"{fmt(pt['cosine_mean'])}; max abs diff {fmt(pt['max_abs_diff'])}; "
        f"non-finite embeddings: {pt['nonfinite']}."
    )
    s.tables.append(_worst_table("worst texts", pt["worst"]))
    rows = [
        _consistency_row(name, key, f[key])
        for name, key in (
            ("batched vs alone", "batch_vs_single"),
            ("padded among long texts", "padding"),
            ("instruction path (queries)", "instruction"),
        )
    ]
    s.tables.append((["consistency", "cosine min", "max abs diff", "detail"], rows))
    m = f["matryoshka"]
    if "skipped" not in m and m["dims"]:
        s.tables.append(
            (
                ["Matryoshka dim", "cosine min", "cosine mean"],
                [[d, fmt(v["cosine_min"]), fmt(v["cosine_mean"])] for d, v in m["dims"].items()],
            )
        )
    ka = f["known_answer"]
    if "skipped" in ka:
        s.lines.append(f"Known-answer check (model card scores): not run — {ka['skipped']}.")
    else:
        s.lines.append(
            f"Known-answer check ({ka['model']} card, queries x documents): scores "
            f"{ka['scores']} vs published {ka['expected']}; max error {fmt(ka['max_error'])}."
        )
    return s


def _retrieval(rt: dict[str, Any]) -> Section:
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
                [label, fmt(rt[key]["ndcg@10"], 5), fmt(rt[key]["recall@100"], 5)]
                for label, key in (
                    ("onnxruntime (artifact)", "onnxruntime"),
                    ("PyTorch (reference)", "pytorch"),
                )
            ]
            + [["published", fmt(pub["ndcg@10"], 5), "–"]],
        )
    )
    s.lines.append(
        f"Mean top-10 overlap per query: {fmt(rt['top10_overlap_mean'], 4)} (lowest "
        f"{fmt(rt['top10_overlap_min'], 2)}); nDCG@10 drop {fmt(rt['ndcg10_drop'])}."
        + (f" Published score: {pub['note']}." if pub["ndcg@10"] is not None else "")
    )
    return s


def _embed_sections(r: dict[str, Any]) -> list[Section]:
    out = [_fidelity(r["fidelity"])]
    if r.get("retrieval"):
        out.append(_retrieval(r["retrieval"]))
    return out


def _rerank_sections(r: dict[str, Any]) -> list[Section]:
    """Agreement with the card recipe: every metric, the worst pairs."""
    a = r["agreement"]
    s = Section("Agreement with the card recipe")
    s.lines.append(f"{a['pairs']} pairs over {a['queries']} queries ({r['pairs']['dataset']}).")
    if "skipped" in a:
        s.lines.append(f"Not compared: {a['skipped']} (pairs {a['nonfinite_pairs']}).")
        return [s]
    s.tables.append((["metric", "value"], [[k, fmt(v)] for k, v in a.items() if k != "worst"]))
    s.tables.append(
        (
            ["query", "document", "log-odds (ours)", "log-odds (reference)"],
            [
                [short(w["query"], 40), short(w["document"]), fmt(w["ours"]), fmt(w["reference"])]
                for w in a["worst"]
            ],
        )
    )
    return [s]


# task name -> the report's sections of that task's own checks
TASK_SECTIONS: dict[str, Callable[[dict[str, Any]], list[Section]]] = {
    "embed": _embed_sections,
    "rerank": _rerank_sections,
}


def _speed(sp: dict[str, Any]) -> Section:
    s = Section("Speed and memory")
    engines = list(sp["engines"])
    ref_device = sp["engines"].get("pytorch", {}).get("device", "–")
    s.lines.append(
        f"Device {sp['device']}: onnxruntime providers {', '.join(sp['providers'])}, PyTorch "
        f"on {ref_device}; rows of token ids ({sp['unit']}s) from {sp['texts']}, the same rows "
        f"for both engines (tokenisation not timed); {sp['warmup']} warm-up call(s) excluded, "
        f"median of {sp['repeats']} timed calls per cell; each engine in its own process. "
        "Peak RSS per length: the engine process's high-water mark over the cells of that "
        "length (model weights included); 'after load': the mark once the model is loaded."
    )
    cols = ["batch", "length"]
    for e in engines:
        cols += [f"{e} tok/s", f"{e} {sp['unit']}s/s", f"{e} p50 ms", f"{e} p95 ms"]
    rows = []
    for g in sp["grid"]:
        row: list[Any] = [g["batch_size"], g["length"]]
        for e in engines:
            row += [
                fmt(g[e]["tokens_per_s"], 0),
                fmt(g[e]["rows_per_s"], 1),
                fmt(g[e]["latency_p50_ms"], 2),
                fmt(g[e]["latency_p95_ms"], 2),
            ]
        rows.append([*row, f"{g['speedup']:.2f}x" if "speedup" in g else "–"])
    s.tables.append(([*cols, "speedup"], rows))
    s.tables += _memory_tables(sp, engines)
    if sp.get("gpu_peak_flops"):
        s.tables.append(
            (
                ["batch", "length"] + [f"{e} MFU" for e in engines],
                [
                    [g["batch_size"], g["length"]] + [fmt(g[e].get("mfu"), 4) for e in engines]
                    for g in sp["grid"]
                ],
            )
        )
    else:
        s.lines.append(f"MFU: not computed ({sp['mfu_note']}).")
    s.lines += list(sp.get("notes", []))
    s.lines += [f"{e}: {sp['engines'][e]['note']}" for e in engines if sp["engines"][e].get("note")]
    return s


def _memory_tables(sp: dict[str, Any], engines: list[str]) -> list[Table]:
    """Peak RSS per engine (after load, per length); peak GPU memory when it was measured."""
    lengths = sp["lengths"]
    mem = {e: memory_by_length(sp, e) for e in engines}
    rss_rows = [
        [e, fmt(sp["engines"][e].get("rss_peak_mb"), 0)]
        + [fmt(mem[e][n]["rss"], 0) for n in lengths]
        for e in engines
    ]
    tables: list[Table] = [(["peak RSS MB", "after load"] + [f"L={n}" for n in lengths], rss_rows)]
    if any(mem[e][n]["gpu"] is not None for e in engines for n in lengths):
        tables.append(
            (
                ["peak GPU MB"] + [f"L={n}" for n in lengths],
                [[e] + [fmt(mem[e][n]["gpu"], 0) for n in lengths] for e in engines],
            )
        )
    return tables


def _environment(env: dict[str, Any]) -> Section:
    rows = [
        ["CPU", f"{env['cpu']} ({env['cpu_count']} logical cores)"],
        ["memory", f"{fmt(env['memory_gb'], 1)} GiB"],
        ["GPU", ", ".join(env["gpus"]) or "none"],
        ["python / platform", f"{env['python']} / {env['platform']}"],
        ["onnxruntime providers used", ", ".join(env["onnxruntime_providers_used"])],
        ["onnxruntime providers available", ", ".join(env["onnxruntime_available_providers"])],
        ["reference device", env["reference_device"]],
        ["libraries", ", ".join(f"{k} {v}" for k, v in env["libraries"].items())],
    ]
    return Section("Environment", tables=[(["item", "value"], rows)])


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
        f"{c['meaning']}: {fmt(c['value'])}, required {c['comparison']} {fmt(c['threshold'])}."
    )
    d = c.get("detail")
    if isinstance(d, dict) and "worst_texts" in d:
        s.tables.append(_worst_table("index", d["worst_texts"]))
    elif isinstance(d, dict) and "worst" in d:
        s.tables.append(
            (
                ["query", "document", "ours", "reference"],
                [
                    [
                        short(w["query"], 40),
                        short(w["document"]),
                        fmt(w["ours"]),
                        fmt(w["reference"]),
                    ]
                    for w in d["worst"]
                ],
            )
        )
    elif isinstance(d, dict) and "worst_queries" in d:
        s.tables.append(
            (
                ["query", "top-10 overlap", "text"],
                [
                    [q["query_id"], fmt(q["overlap"], 2), short(q["text"])]
                    for q in d["worst_queries"]
                ],
            )
        )
    elif d:
        s.lines.append(f"Detail: {json.dumps(d, ensure_ascii=False)}")
    return s


# ----------------------------------------------------------------------------- writers


def to_markdown(r: dict[str, Any]) -> str:
    return markdown(
        f"{HEADING}: {r['verdict'].upper()}",
        sections(r),
        ["Plots (cosine histogram, throughput and memory vs length): report.html."]
        if r["task"] == "embed" or r.get("speed")
        else [],
    )


def to_html(r: dict[str, Any], images: dict[str, bytes]) -> str:
    """The page, with the plots after the summary."""
    shown = []
    if images:
        shown.append("<h2>Plots</h2><div id='plots'>")
        for name, data in images.items():
            b64 = base64.b64encode(data).decode("ascii")
            shown.append(f"<img id='{name}' alt='{name}' src='data:image/png;base64,{b64}'>")
        shown.append("</div>")
    return html_page(HEADING, r["verdict"], sections(r), shown)


def write_report(r: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder` (created)."""
    return write_files(r, folder, to_markdown(r), to_html(r, plots(r)))
