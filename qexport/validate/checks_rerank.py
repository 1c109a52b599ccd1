"""The checks of a reranker artifact (task "rerank"): agreement with the model card's
transformers recipe in PyTorch fp32 (`rerank_reference.CardReranker`) on the same (query,
documents) groups (max and mean |log-odds difference|, Spearman over all pairs and the lowest
per query, top-3 overlap and top-1 agreement per query) and the artifact against itself
(batched vs one pair at a time).

Groups: the export's int8 check queries against the short built-in texts, or with a BEIR
`--dataset` per query its relevant documents plus those sharing the most words with it.
"""

from __future__ import annotations

import random
import re
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest
from ..runtime import Reranker
from ..tasks import sigmoid
from .checks import Check, Measured, ValidateOptions, finite, keys
from .fidelity import rows_or_nan
from .parity import torch_device

Groups = list[tuple[str, list[str]]]  # (query, its documents)
_WORD = re.compile(r"\w+")
RECIPE = "Qwen3-Reranker model card, transformers, left padding, softmax over [no, yes]"

_A = ("agreement",)
CHECKS: list[Check] = [
    finite(_A, "pair", "nonfinite_pairs"),
    Check("logodds_max_diff", _A, "logodds_max_diff", keys("worst")),
    Check("spearman_min", _A, "spearman_min"),
    Check("top3_overlap_min", _A, "top3_overlap_min"),
    Check("batch_logodds_max_diff", _A, "batch_logodds_max_diff"),
]


def builtin_groups() -> Groups:
    """The export's int8 check queries against the short built-in texts (the card recipe
    computes [batch, seq, vocab] logits: long texts would cost gigabytes in the reference)."""
    from ..export.rerank import CHECK_QUERIES
    from ..texts import BUILTIN_TEXTS

    docs = [t for t in BUILTIN_TEXTS if t.strip() and len(t) <= 200]
    return [(q, docs) for q in CHECK_QUERIES[:4]]


def beir_groups(
    folder: str | Path, queries: int, docs_per_query: int, seed: int = 0
) -> tuple[Groups, dict[str, Any]]:
    """Per query (a seeded sample of the judged ones): its relevant documents, then the
    documents sharing the most distinct words with it (a lexical first stage), up to
    `docs_per_query`. Returns the groups and a description."""
    from .retrieval import load_beir

    ds = load_beir(folder, max_queries=queries, seed=seed)
    words = [set(_WORD.findall(t.lower())) for t in ds.corpus_texts]
    index = {d: i for i, d in enumerate(ds.corpus_ids)}
    groups: Groups = []
    for qid, qtext in zip(ds.query_ids, ds.query_texts, strict=True):
        qw = set(_WORD.findall(qtext.lower()))
        picked = [index[d] for d in ds.qrels[qid] if d in index][:docs_per_query]
        for i in sorted(range(len(words)), key=lambda i: -len(qw & words[i])):
            if len(picked) >= docs_per_query:
                break
            if i not in picked:
                picked.append(i)
        random.Random(seed).shuffle(picked)  # the relevant ones are not always first
        groups.append((qtext, [ds.corpus_texts[i] for i in picked]))
    info = {
        "dataset": ds.name,
        "queries": len(groups),
        "docs_per_query": docs_per_query,
        "first_stage": "relevant documents + most shared words",
    }
    return groups, info


def reference_folder(spec: str, artifact: Path, manifest: Manifest, stack: ExitStack) -> Path:
    """A checkpoint folder transformers can load: the folder itself, a hub snapshot, or a
    random reranker written again (same seed, same layers as the export) into a temporary
    folder that lives as long as `stack`."""
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
    if src.folder is None:
        raise ValueError(f"reference {spec!r} has no checkpoint folder for the card recipe")
    return src.folder


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else 1.0


def _logits(rr: Reranker, q: str, docs: list[str], batch_size: int) -> np.ndarray:
    """The artifact's log-odds, NaN where a pair is not finite (`rows_or_nan`)."""
    run = lambda d: rr.logits(q, d, batch_size=batch_size)  # noqa: E731
    return rows_or_nan(run, docs, ())[0].astype(np.float64)


def agreement(rr: Reranker, card: Any, groups: Groups, batch_size: int) -> dict[str, Any]:
    ours = [_logits(rr, q, docs, batch_size) for q, docs in groups]
    flat = np.concatenate(ours)
    bad = np.flatnonzero(~np.isfinite(flat))
    head: dict[str, Any] = {"pairs": len(flat), "queries": len(groups), "nonfinite": len(bad)}
    if len(bad):
        head["nonfinite_pairs"] = [int(i) for i in bad[:20]]
        return {**head, "skipped": "the artifact produced NaN/Inf"}
    theirs, spear, top3, top1, batch_diff = [], [], [], [], 0.0
    worst: list[dict[str, Any]] = []
    for (q, docs), a in zip(groups, ours, strict=True):
        b = card.logodds(card.pairs(q, docs), batch_size=batch_size)
        alone = np.array([rr.logits(q, [d])[0] for d in docs[:4]], dtype=np.float64)
        batch_diff = max(batch_diff, float(np.abs(alone - a[:4]).max()))
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
    b_all = np.concatenate(theirs)
    diff = np.abs(flat - b_all)
    worst.sort(key=lambda w: -abs(w["ours"] - w["reference"]))
    return {
        **head,
        "logodds_max_diff": float(diff.max()),
        "logodds_mean_diff": float(diff.mean()),
        "score_max_diff": float(np.abs(sigmoid(flat) - sigmoid(b_all)).max()),
        "spearman_all": _rank_corr(flat, b_all),
        "spearman_min": float(min(spear)),
        "top3_overlap_min": float(np.mean(top3)),
        "top1_agreement": float(np.mean(top1)),
        "batch_logodds_max_diff": batch_diff,
        "worst": worst[:5],
    }


def measure(
    artifact: Path, manifest: Manifest, opts: ValidateOptions, stack: ExitStack
) -> Measured:
    """Agreement with the card recipe; the reference folder lives as long as `stack` (the
    speed run loads it again)."""
    from .rerank_reference import CardReranker

    if opts.dataset is not None:
        queries = opts.max_queries or 10
        groups, source = beir_groups(opts.dataset, queries, opts.docs_per_query, opts.seed)
    else:
        groups, source = builtin_groups(), {"dataset": "built-in check pairs"}
    rr = Reranker(artifact, device=opts.device)
    ref_device, note = torch_device(opts.device)
    folder = reference_folder(opts.reference, artifact, manifest, stack)
    card = CardReranker(folder, max_length=manifest.max_length, device=ref_device)
    parts = {
        "reference": {
            "model": opts.reference,
            "recipe": RECIPE,
            "device": ref_device,
            "dtype": "fp32",
        },
        "pairs": source,
        "agreement": agreement(rr, card, groups, opts.batch_size),
    }
    return Measured(
        parts, rr.providers, ref_device, rr.encoder, str(folder), [note] if note else []
    )


def summary(r: dict[str, Any]) -> list[str]:
    a = r["agreement"]
    head = f"{a['pairs']} pairs / {a['queries']} queries: "
    providers = ",".join(r["environment"]["onnxruntime_providers_used"])
    tail = f"(precision {r['artifact']['precision']}, providers {providers})"
    if "skipped" in a:
        return [f"{head}{a['nonfinite']} pair(s) NaN/Inf {tail}"]
    return [
        f"{head}max |log-odds diff| {a['logodds_max_diff']:.3g}, Spearman min "
        f"{a['spearman_min']:.5f}, top-3 overlap {a['top3_overlap_min']:.3f}, top-1 agreement "
        f"{a['top1_agreement']:.3f} {tail}"
    ]
