"""Pairs for reranker checks and benchmarks, and pairs/s + peak RSS of one engine measured
alone in a fresh (spawned) process: the artifact through `Reranker`, or the model card's
transformers recipe (`CardReranker`). Used by `qexport validate` and bench/bench_rerank.py."""

from __future__ import annotations

import multiprocessing
import random
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

Groups = list[tuple[str, list[str]]]  # (query, its documents)
# the artifact; the card recipe; the card recipe with logits_to_keep=1 (last position only)
ENGINES = ("onnxruntime", "pytorch", "pytorch-last")
_WORD = re.compile(r"\w+")


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
        overlap = sorted(range(len(words)), key=lambda i: -len(qw & words[i]))
        for i in overlap:
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


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    from ..memory import peak_rss_mb, reset_peak_rss

    groups: Groups = cfg["groups"]
    batch = cfg["batch_size"]
    if cfg["engine"] == "onnxruntime":
        from ..runtime import Reranker

        rr = Reranker(cfg["model"], device=cfg["device"], threads=cfg["threads"])

        def run(groups: Groups) -> list[np.ndarray]:
            return [rr.logits(q, docs, batch_size=batch) for q, docs in groups]
    else:
        import torch

        from .rerank_reference import CardReranker

        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        card = CardReranker(
            cfg["model"],
            max_length=cfg["max_length"],
            device=cfg["device"],
            last_logits_only=cfg["engine"] == "pytorch-last",
        )

        def run(groups: Groups) -> list[np.ndarray]:
            return [card.logodds(card.pairs(q, docs), batch_size=batch) for q, docs in groups]

    loaded = peak_rss_mb()
    reset_peak_rss()
    for _ in range(cfg["warmup"]):
        run(groups[:1])
    times = []
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        logodds = run(groups)
        times.append(time.perf_counter() - start)
    n = sum(len(d) for _, d in groups)
    median = statistics.median(times)
    return {
        "pairs": n,
        "seconds_median": round(median, 4),
        "pairs_per_s": round(n / median, 3),
        "rss_after_load_mb": loaded,
        "peak_rss_mb": peak_rss_mb(),
        "repeats": cfg["repeats"],
        "logodds": [float(x) for arr in logodds for x in arr],
    }


def measure(
    engine: str,
    model: str | Path,
    groups: Groups,
    *,
    batch_size: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    max_length: int = 8192,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run `engine` (ENGINES: "onnxruntime" on an artifact, "pytorch"/"pytorch-last" on a
    checkpoint folder) alone in a spawned process over every group (warm-up: the first group);
    pairs/s from the median of `repeats` passes, and the log-odds of the last pass."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    cfg = {
        "engine": engine,
        "model": str(model),
        "groups": groups,
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "max_length": max_length,
        "device": device,
    }
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_worker, cfg).result()
