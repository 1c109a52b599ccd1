"""`run_validation`: every check of `qexport validate`, gathered into one report dict.

The report (schema `REPORT_SCHEMA_VERSION`) holds the metrics of each section (fidelity,
retrieval, speed), the checks (metric, value, threshold, pass/fail, and what failed), the
thresholds used and the environment. `report.py` writes it as json, Markdown and HTML.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import load_manifest
from ..runtime import Embedder
from ..texts import BUILTIN_TEXTS
from . import fidelity as fid
from .environment import collect
from .parity import load_reference
from .thresholds import KEYS, default_thresholds, passes

log = logging.getLogger("qexport")

REPORT_SCHEMA = "qexport.validate.report"
REPORT_SCHEMA_VERSION = 1


@dataclass
class ValidateOptions:
    reference: str
    texts: list[str] | None = None
    texts_source: str = "built-in"
    dataset: str | Path | None = None
    max_corpus: int | None = None
    max_queries: int | None = None
    device: str = "cpu"
    thresholds: dict[str, float | None] = field(default_factory=dict)
    speed: bool = True
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    lengths: tuple[int, ...] = (16, 128, 512)
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    progress: bool = False
    force_known_answer: str | None = None  # tests: run the card check on any artifact


def _check(
    key: str, value: float | None, thresholds: dict[str, float | None], detail: Any = None
) -> dict[str, Any]:
    op, meaning = KEYS[key]
    threshold = thresholds.get(key)
    if value is None:
        status = "skipped"
    elif threshold is None:
        status = "info"
    else:
        status = "pass" if passes(key, value, threshold) else "fail"
    return {
        "name": key,
        "meaning": meaning,
        "value": value,
        "comparison": op,
        "threshold": threshold,
        "status": status,
        "detail": detail,
    }


def _fidelity(
    emb: Embedder, ref: Any, texts: list[str], opts: ValidateOptions, reference_kind: str
) -> dict[str, Any]:
    steps = ["per-text", "batch", "padding", "matryoshka", "instruction", "known answer"]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(steps), desc="fidelity", disable=not opts.progress, leave=False)
    ours, _ = fid.embed_checked(emb, texts)
    theirs = ref.embed(texts)
    out: dict[str, Any] = {"per_text": fid.per_text(emb, ours, theirs, texts)}
    bar.update(1)
    if out["per_text"]["nonfinite"]:
        reason = {"skipped": "the artifact produced NaN/Inf"}
        out.update(batch_vs_single=reason, padding=reason, matryoshka=reason)
        out.update(instruction=reason, known_answer=reason)
        bar.close()
        return out
    out["batch_vs_single"] = fid.batch_vs_single(emb, texts)
    bar.update(1)
    out["padding"] = fid.padding_invariance(emb, texts)
    bar.update(1)
    out["matryoshka"] = fid.matryoshka(emb, theirs, texts)
    bar.update(1)
    queries = [t for t in texts if t.strip()][:16]
    out["instruction"] = fid.instruction_path(emb, ref, queries)
    bar.update(1)
    model = fid.known_answer_model(opts.reference, reference_kind, emb)
    out["known_answer"] = fid.known_answer(emb, model, force=opts.force_known_answer)
    bar.update(1)
    bar.close()
    return out


def _with_instruction(embed: Any, instruction: str | None, texts: list[str]) -> Any:
    return embed(texts, instruction)


def _retrieval(emb: Embedder, ref: Any, opts: ValidateOptions) -> dict[str, Any]:
    from . import retrieval as rt

    assert opts.dataset is not None
    ds = rt.load_beir(
        opts.dataset, max_corpus=opts.max_corpus, max_queries=opts.max_queries, seed=opts.seed
    )
    instruction = None
    if emb.manifest.instruction_template is not None:
        instruction = rt.TASK_INSTRUCTIONS.get(ds.name.lower(), emb.default_instruction)
    runs = {}
    engines = {
        "onnxruntime": lambda t, i=None: emb.embed(t, instruction=i),
        "pytorch": lambda t, i=None: ref.embed(t, instruction=i, batch_size=16),
    }
    for name, embed in engines.items():
        docs = rt.embed_in_chunks(
            embed, ds.corpus_texts, desc=f"corpus ({name})", progress=opts.progress
        )
        queries = rt.embed_in_chunks(
            partial(_with_instruction, embed, instruction),
            ds.query_texts,
            desc=f"queries ({name})",
            progress=opts.progress,
        )
        ranking = rt.search(queries, docs, ds.corpus_ids, k=100)
        runs[name] = (ranking, rt.evaluate(ranking, ds.query_ids, ds.qrels))
    overlap = rt.top_k_overlap(runs["onnxruntime"][0], runs["pytorch"][0], k=10)
    order = np.argsort(overlap, kind="stable")[:5]
    key = rt.model_key(opts.reference, emb.manifest.source.get("model"))
    is_random = emb.manifest.source.get("kind") == "random" or opts.reference.startswith("random:")
    published = None if is_random else rt.published_ndcg10(key, ds.name)
    comparable = published is not None and not ds.subsampled
    a, r = runs["onnxruntime"][1], runs["pytorch"][1]
    return {
        "dataset": ds.name,
        "path": str(opts.dataset),
        "corpus": len(ds.corpus_ids),
        "queries": len(ds.query_ids),
        "subsampled": ds.subsampled or None,
        "query_instruction": instruction,
        "max_length": emb.manifest.max_length,
        "onnxruntime": a,
        "pytorch": r,
        "ndcg10_drop": r["ndcg@10"] - a["ndcg@10"],
        "top10_overlap_mean": float(overlap.mean()),
        "top10_overlap_min": float(overlap.min()),
        "worst_queries": [
            {
                "query_id": ds.query_ids[i],
                "overlap": float(overlap[i]),
                "text": ds.query_texts[i][:120],
            }
            for i in order
        ],
        "published": {
            "model": key,
            "ndcg@10": published,
            "comparable": comparable,
            "note": None
            if published is None
            else (
                "full corpus and query set"
                if comparable
                else "not comparable: the corpus or the queries were subsampled"
            ),
        },
    }


def _checks(report: dict[str, Any], thresholds: dict[str, float | None]) -> list[dict[str, Any]]:
    f = report["fidelity"]
    pt = f["per_text"]
    checks = [
        {
            "name": "finite",
            "meaning": "no NaN/Inf in any embedding",
            "value": pt["nonfinite"],
            "comparison": "==",
            "threshold": 0,
            "status": "pass" if pt["nonfinite"] == 0 else "fail",
            "detail": {"indices": pt["nonfinite_indices"]} if pt["nonfinite"] else None,
        },
        _check("cosine_min", pt["cosine_min"], thresholds, {"worst_texts": pt["worst"]}),
        _check("cosine_mean", pt["cosine_mean"], thresholds),
        _check("max_abs_diff", pt["max_abs_diff"], thresholds),
    ]

    def sub(key: str, section: str, field_: str, detail_keys: tuple[str, ...]) -> None:
        s = f[section]
        value = s.get(field_) if "skipped" not in s else None
        detail = {k: s[k] for k in detail_keys if k in s} or s.get("skipped")
        checks.append(_check(key, value, thresholds, detail))

    sub("batch_cosine_min", "batch_vs_single", "cosine_min", ("worst_text", "max_abs_diff"))
    sub("padding_cosine_min", "padding", "cosine_min", ("worst_text", "padded_to_tokens"))
    sub("matryoshka_cosine_min", "matryoshka", "cosine_min", ("worst_dim",))
    sub("instruction_cosine_min", "instruction", "cosine_min", ("instruction",))
    sub("known_answer_tol", "known_answer", "max_error", ("scores", "expected"))
    r = report.get("retrieval")
    if r:
        checks.append(
            _check(
                "ndcg10_drop_max",
                r["ndcg10_drop"],
                thresholds,
                {"onnxruntime": r["onnxruntime"]["ndcg@10"], "pytorch": r["pytorch"]["ndcg@10"]},
            )
        )
        checks.append(
            _check(
                "top10_overlap_min",
                r["top10_overlap_mean"],
                thresholds,
                {"worst_queries": r["worst_queries"]},
            )
        )
    return checks


def run_validation(artifact: str | Path, opts: ValidateOptions) -> dict[str, Any]:
    """Run every check; warnings (e.g. truncation of long texts) go into the report's notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _run(Path(artifact), opts)
    kinds: dict[str, list[str]] = {}  # same message up to its numbers -> occurrences
    for w in caught:
        if issubclass(w.category, UserWarning):
            msg = str(w.message)
            kinds.setdefault(re.sub(r"\d+", "N", msg), []).append(msg)
    for msgs in list(kinds.values())[:10]:
        more = f" (and {len(msgs) - 1} similar warning(s))" if len(msgs) > 1 else ""
        report["notes"].append(f"warning: {msgs[0]}{more}")
    return report


def _run(artifact: Path, opts: ValidateOptions) -> dict[str, Any]:
    manifest = load_manifest(artifact, verify=True)
    thresholds = {**default_thresholds(manifest.precision), **opts.thresholds}
    texts = list(opts.texts) if opts.texts is not None else list(BUILTIN_TEXTS)
    if not texts:
        raise ValueError("no texts to validate with")
    emb = Embedder(artifact, device=opts.device)
    ref, ref_device, ref_note = load_reference(opts.reference, artifact, opts.device)
    notes = [ref_note] if ref_note else []
    kind = getattr(getattr(ref, "src", None), "kind", "")
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "path": str(artifact),
            "source": manifest.source,
            "precision": manifest.precision,
            "quantization": manifest.quantization,
            "embedding_dim": manifest.embedding_dim,
            "allowed_dims": manifest.allowed_dims,
            "max_length": manifest.max_length,
            "pooling": manifest.pooling,
            "instruction_template": manifest.instruction_template,
            "architecture": manifest.architecture,
        },
        "reference": {"model": opts.reference, "device": ref_device, "dtype": "fp32"},
        "texts": {"source": opts.texts_source, "count": len(texts)},
        "thresholds": thresholds,
    }
    log.info("validate: fidelity on %d texts", len(texts))
    report["fidelity"] = _fidelity(emb, ref, texts, opts, kind)
    if "skipped" in report["fidelity"]["known_answer"]:
        notes.append("known-answer check: " + report["fidelity"]["known_answer"]["skipped"])
    report["retrieval"] = None
    if opts.dataset is not None:
        log.info("validate: retrieval on %s", opts.dataset)
        report["retrieval"] = _retrieval(emb, ref, opts)
        sub = report["retrieval"]["subsampled"]
        if sub:
            from .report import subsample_text

            notes.append(f"retrieval ran on a subsample: {subsample_text(sub)}")
    env = collect(emb.providers, ref_device)
    report["speed"] = None
    if opts.speed:
        log.info("validate: speed grid %s x %s", opts.batch_sizes, opts.lengths)
        del ref  # the speed runs load their own engines in subprocesses
        report["speed"] = _speed(artifact, opts, env)
    report["environment"] = env
    report["checks"] = _checks(report, thresholds)
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    report["verdict"] = "fail" if failed else "pass"
    report["failed"] = failed
    report["notes"] = notes
    return report


def _speed(artifact: Path, opts: ValidateOptions, env: dict[str, Any]) -> dict[str, Any]:
    from .speed import run_speed

    gpu = env["gpus"][0] if env["gpus"] else None
    return run_speed(
        artifact,
        opts.reference,
        device=opts.device,
        batch_sizes=opts.batch_sizes,
        lengths=opts.lengths,
        repeats=opts.repeats,
        warmup=opts.warmup,
        pool=opts.texts if opts.texts_source != "built-in" else None,
        progress=opts.progress,
        gpu_name=gpu,
    )
