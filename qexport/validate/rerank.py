"""`qexport validate DIR --reference MODEL` on a reranker artifact (task "rerank").

Agreement with the model card's transformers recipe in PyTorch fp32 (rerank_reference.py) on
the same (query, documents) groups: max and mean |log-odds difference|, Spearman over all
pairs and the lowest per query, top-3 overlap and top-1 agreement per query, and the artifact
against itself (batched vs one pair at a time); optionally pairs/s and peak RSS of both
engines (rerank_speed.py). The report is json, Markdown and HTML like the embedding one.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, load_manifest
from ..runtime import Reranker
from .environment import collect
from .render import Section, fmt, html_page, markdown, short, write_files
from .rerank_speed import Groups, beir_groups, measure
from .thresholds import threshold_value

REPORT_SCHEMA = "qexport.validate.rerank-report"
# key -> (comparison, meaning, default per precision)
THRESHOLDS: dict[str, tuple[str, str, dict[str, float]]] = {
    "logodds_max_diff": (
        "<=",
        "largest |log-odds difference| of any pair vs the card recipe",
        {"fp32": 1e-3, "fp16": 0.05, "bf16": 0.3, "int8": 0.3},
    ),
    "spearman_min": (
        ">=",
        "lowest per-query Spearman of scores vs the card recipe",
        {"fp32": 0.999, "fp16": 0.99, "bf16": 0.95, "int8": 0.95},
    ),
    "top3_overlap_min": (
        ">=",
        "mean top-3 overlap per query vs the card recipe",
        {"fp32": 0.95, "fp16": 0.9, "bf16": 0.8, "int8": 0.8},
    ),
    "batch_logodds_max_diff": (
        "<=",
        "largest |log-odds| change batched vs one pair alone",
        {"fp32": 1e-4, "fp16": 0.02, "bf16": 0.1, "int8": 0.05},
    ),
}


@dataclass
class RerankValidateOptions:
    reference: str
    dataset: str | Path | None = None
    max_queries: int = 10
    docs_per_query: int = 10
    thresholds: dict[str, float | None] = field(default_factory=dict)
    speed: bool = False
    batch_size: int = 8
    repeats: int = 3
    seed: int = 0


def builtin_groups() -> Groups:
    """The export's int8 check queries against the short built-in texts (the card recipe
    computes [batch, seq, vocab] logits: long texts would cost gigabytes in the reference)."""
    from ..export.rerank import CHECK_QUERIES
    from ..texts import BUILTIN_TEXTS

    docs = [t for t in BUILTIN_TEXTS if t.strip() and len(t) <= 200]
    return [(q, docs) for q in CHECK_QUERIES[:4]]


def _reference_folder(spec: str, artifact: Path, manifest: Manifest, stack: ExitStack) -> Path:
    """A checkpoint folder transformers can load: the folder itself, a hub snapshot, or a
    random reranker written again (same seed, same layers as the export)."""
    layers = manifest.architecture.get("layers_exported")
    if spec.startswith("random:"):
        from ..export.random import write_checkpoint

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qexport-ref.")))
        name = spec.split(":", 1)[1]
        return write_checkpoint(name, tmp / "ref", layers=layers, tokenizer=artifact)
    if layers is not None:
        raise ValueError("a layer-truncated export can only be validated against random:<name>")
    from ..export.source import resolve

    src = resolve(spec)
    assert src.folder is not None
    return src.folder


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else 1.0


def agreement(rr: Reranker, card: Any, groups: Groups, batch_size: int) -> dict[str, Any]:
    ours, theirs, spear, top3, top1, batch_diff = [], [], [], [], [], 0.0
    worst: list[dict[str, Any]] = []
    for q, docs in groups:
        a = rr.logits(q, docs, batch_size=batch_size).astype(np.float64)
        b = card.logodds(card.pairs(q, docs), batch_size=batch_size)
        alone = np.array([rr.logits(q, [d])[0] for d in docs[:4]], dtype=np.float64)
        batch_diff = max(batch_diff, float(np.abs(alone - a[:4]).max()))
        ours.append(a)
        theirs.append(b)
        spear.append(_rank_corr(a, b))
        ta, tb = np.argsort(-a, kind="stable"), np.argsort(-b, kind="stable")
        k = min(3, len(docs))
        top3.append(len(set(ta[:k]) & set(tb[:k])) / k)
        top1.append(float(ta[0] == tb[0]))
        i = int(np.abs(a - b).argmax())
        worst.append(
            {"query": q, "document": docs[i], "ours": float(a[i]), "reference": float(b[i])}
        )
    a_all, b_all = np.concatenate(ours), np.concatenate(theirs)
    diff = np.abs(a_all - b_all)
    worst.sort(key=lambda w: -abs(w["ours"] - w["reference"]))
    return {
        "pairs": len(a_all),
        "queries": len(groups),
        "logodds_max_diff": float(diff.max()),
        "logodds_mean_diff": float(diff.mean()),
        "score_max_diff": float(np.abs(_sig(a_all) - _sig(b_all)).max()),
        "spearman_all": _rank_corr(a_all, b_all),
        "spearman_min": float(min(spear)),
        "top3_overlap_min": float(np.mean(top3)),
        "top1_agreement": float(np.mean(top1)),
        "batch_logodds_max_diff": batch_diff,
        "worst": worst[:5],
    }


def _sig(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _checks(values: dict[str, Any], thresholds: dict[str, float | None]) -> list[dict[str, Any]]:
    out = []
    for key, (op, meaning, _) in THRESHOLDS.items():
        t, v = thresholds.get(key), values[key]
        ok = t is None or (v <= t if op == "<=" else v >= t)
        status = "info" if t is None else ("pass" if ok else "fail")
        out.append(
            {
                "name": key,
                "meaning": meaning,
                "value": v,
                "comparison": op,
                "threshold": t,
                "status": status,
            }
        )
    return out


def run_rerank_validation(artifact: str | Path, opts: RerankValidateOptions) -> dict[str, Any]:
    from .rerank_reference import CardReranker

    artifact = Path(artifact)
    m = load_manifest(artifact, verify=True)
    precision = "int8" if m.precision.startswith("int") else m.precision
    thresholds = {k: v[2][precision] for k, v in THRESHOLDS.items()} | opts.thresholds
    if opts.dataset is not None:
        groups, source = beir_groups(opts.dataset, opts.max_queries, opts.docs_per_query, opts.seed)
    else:
        groups, source = builtin_groups(), {"dataset": "built-in check pairs"}
    rr = Reranker(artifact, device="cpu")
    with ExitStack() as stack:
        ref_folder = _reference_folder(opts.reference, artifact, m, stack)
        card = CardReranker(ref_folder, max_length=m.max_length)
        values = agreement(rr, card, groups, opts.batch_size)
        del card
        speed = None
        if opts.speed:
            kw = {
                "batch_size": opts.batch_size,
                "repeats": opts.repeats,
                "max_length": m.max_length,
            }
            ort_s = measure("onnxruntime", artifact, groups, **kw)  # type: ignore[arg-type]
            pt_s = measure("pytorch", ref_folder, groups, **kw)  # type: ignore[arg-type]
            ort_s.pop("logodds")
            pt_s.pop("logodds")
            speed = {
                "onnxruntime": ort_s,
                "pytorch": pt_s,
                "batch_size": opts.batch_size,
                "speedup": round(ort_s["pairs_per_s"] / pt_s["pairs_per_s"], 3),
            }
    checks = _checks(values, thresholds)
    failed = [c["name"] for c in checks if c["status"] == "fail"]
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "path": str(artifact),
            "task": m.task,
            "source": m.source,
            "precision": m.precision,
            "quantization": m.quantization,
            "max_length": m.max_length,
            "architecture": m.architecture,
        },
        "reference": {
            "model": opts.reference,
            "recipe": "Qwen3-Reranker model card, "
            "transformers, left padding, softmax over [no, yes]",
            "dtype": "fp32",
        },
        "pairs": source,
        "agreement": values,
        "speed": speed,
        "thresholds": thresholds,
        "checks": checks,
        "verdict": "fail" if failed else "pass",
        "failed": failed,
        "environment": collect(rr.providers, "cpu"),
    }


def sections(r: dict[str, Any]) -> list[Section]:
    a = r["agreement"]
    head = Section(
        "Summary",
        [
            f"- verdict: **{r['verdict'].upper()}**; artifact `{r['artifact']['path']}` "
            f"({r['artifact']['precision']}), reference `{r['reference']['model']}` "
            f"({r['reference']['recipe']}, {r['reference']['dtype']})",
            f"- {a['pairs']} pairs over {a['queries']} queries ({r['pairs']['dataset']})",
        ],
    )
    head.tables.append(
        (
            ["check", "value", "", "threshold", "status"],
            [
                [
                    c["name"],
                    fmt(c["value"]),
                    c["comparison"],
                    fmt(c["threshold"]),
                    c["status"].upper(),
                ]
                for c in r["checks"]
            ],
        )
    )
    agree = Section("Agreement with the card recipe")
    agree.tables.append((["metric", "value"], [[k, fmt(v)] for k, v in a.items() if k != "worst"]))
    agree.tables.append(
        (
            ["query", "document", "log-odds (ours)", "log-odds (reference)"],
            [
                [
                    short(w["query"], 40),
                    short(w["document"]),
                    fmt(w["ours"]),
                    fmt(w["reference"]),
                ]
                for w in a["worst"]
            ],
        )
    )
    out = [head, agree]
    if r["speed"]:
        s = r["speed"]
        sp = Section(
            "Speed and memory (CPU)",
            [f"- batch size {s['batch_size']}; onnxruntime {s['speedup']:.2f}x PyTorch"],
        )
        sp.tables.append(
            (
                ["engine", "pairs/s", "peak RSS MB (run)", "RSS MB after load"],
                [
                    [
                        e,
                        fmt(s[e]["pairs_per_s"]),
                        fmt(s[e]["peak_rss_mb"]),
                        fmt(s[e]["rss_after_load_mb"]),
                    ]
                    for e in ("onnxruntime", "pytorch")
                ],
            )
        )
        out.append(sp)
    env = r["environment"]
    out.append(
        Section(
            "Environment",
            [
                f"- {env['cpu']}, {env['cpu_count']} CPUs; "
                f"providers {', '.join(env['onnxruntime_providers_used'])}"
            ],
        )
    )
    return out


HEADING = "qexport reranker validation report"


def write_rerank_report(r: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder` (created)."""
    secs = sections(r)
    md = markdown(f"{HEADING}: {r['verdict'].upper()}", secs)
    return write_files(r, folder, md, html_page(HEADING, r["verdict"], secs))


def parse_thresholds(spec: str | None) -> dict[str, float | None]:
    """'logodds_max_diff=0.01,spearman_min=none' -> dict (none: report only)."""
    out: dict[str, float | None] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.strip().partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in THRESHOLDS:
            raise ValueError(
                f"reranker threshold {item!r}: expected KEY=VALUE with KEY one of "
                f"{', '.join(THRESHOLDS)}"
            )
        out[key] = threshold_value(key, value)
    return out
