"""Retrieval on a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels.tsv), scored the MTEB
way: text = title + " " + text, cosine similarity over the whole corpus, nDCG@10 and Recall@100
from trec_eval (pytrec_eval, as MTEB and BEIR do).

`load_beir` reads a folder (optionally subsampled), `search` ranks a corpus for each query from
embeddings, `evaluate` scores a ranking against the qrels, `top_k_overlap` compares two rankings.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..util import renormalise

# Published nDCG@10 (MTEB results), keyed by (model, dataset). Comparable only on the full
# corpus and query set, at the model's published max length.
PUBLISHED_NDCG10: dict[tuple[str, str], float] = {
    ("all-minilm-l6-v2", "scifact"): 0.64508,
    ("qwen3-embedding-0.6b", "scifact"): 0.69718,
}

# The task instruction used for queries of instruction-following models (MTEB's Qwen3 prompts).
TASK_INSTRUCTIONS: dict[str, str] = {
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
}

BEIR_FILES = ("corpus.jsonl", "queries.jsonl", "qrels.tsv")


class DatasetError(ValueError):
    """The BEIR folder is missing a file or a file is malformed."""


@dataclass
class BeirDataset:
    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    subsampled: dict[str, int] = field(default_factory=dict)  # empty: the full set


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{n}: invalid JSON ({exc})") from exc
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for n, row in enumerate(reader, 1):
            if n == 1 and row and row[0] == "query-id":
                continue
            if not row:
                continue
            if len(row) != 3:
                raise DatasetError(f"{path}:{n}: expected 3 tab-separated columns, got {len(row)}")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def load_beir(
    folder: str | Path,
    *,
    max_corpus: int | None = None,
    max_queries: int | None = None,
    seed: int = 0,
) -> BeirDataset:
    """Read a BEIR folder. With max_corpus, keep every document judged relevant for the kept
    queries and fill up with a seeded random sample of the others; with max_queries, keep a
    seeded random sample of the judged queries."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {str(folder)!r} does not exist")
    missing = [f for f in BEIR_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"{folder} is not a BEIR folder: missing {', '.join(missing)}")
    corpus = _read_jsonl(folder / "corpus.jsonl")
    queries = _read_jsonl(folder / "queries.jsonl")
    qrels = _read_qrels(folder / "qrels.tsv")
    try:
        doc_ids = [str(d["_id"]) for d in corpus]
        doc_texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in corpus]
        qmap = {str(q["_id"]): q["text"] for q in queries}
    except KeyError as exc:
        raise DatasetError(f"{folder}: record without field {exc}") from exc
    query_ids = [q for q in qmap if q in qrels]
    if not query_ids:
        raise DatasetError(f"{folder}: no query has a judgement in qrels.tsv")
    rng = random.Random(seed)
    sub: dict[str, int] = {}
    if max_queries is not None and max_queries < len(query_ids):
        sub["queries_total"] = len(query_ids)
        query_ids = sorted(rng.sample(query_ids, max_queries), key=query_ids.index)
        sub["queries_kept"] = len(query_ids)
    qrels = {q: qrels[q] for q in query_ids}
    if max_corpus is not None and max_corpus < len(doc_ids):
        relevant = {d for q in query_ids for d in qrels[q]}
        keep = [i for i, d in enumerate(doc_ids) if d in relevant]
        others = [i for i, d in enumerate(doc_ids) if d not in relevant]
        fill = max(0, max_corpus - len(keep))
        keep = sorted(keep + rng.sample(others, min(fill, len(others))))
        sub.update(corpus_total=len(doc_ids), corpus_kept=len(keep), relevant_kept=len(relevant))
        doc_ids = [doc_ids[i] for i in keep]
        doc_texts = [doc_texts[i] for i in keep]
    return BeirDataset(
        name=folder.name,
        corpus_ids=doc_ids,
        corpus_texts=doc_texts,
        query_ids=query_ids,
        query_texts=[qmap[q] for q in query_ids],
        qrels=qrels,
        subsampled=sub,
    )


def search(
    query_emb: np.ndarray, corpus_emb: np.ndarray, corpus_ids: list[str], k: int = 100
) -> list[list[tuple[str, float]]]:
    """Top-k corpus ids and cosine scores per query (embeddings L2-normalised here)."""
    scores = renormalise(query_emb) @ renormalise(corpus_emb).T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out = []
    for row, idx in zip(scores, top, strict=True):
        idx = idx[np.argsort(-row[idx], kind="stable")]
        out.append([(corpus_ids[i], float(row[i])) for i in idx])
    return out


def evaluate(
    ranking: list[list[tuple[str, float]]],
    query_ids: list[str],
    qrels: dict[str, dict[str, int]],
) -> dict[str, float]:
    """nDCG@10 and Recall@100 (mean over queries) with trec_eval's definitions."""
    import pytrec_eval

    run = {q: dict(r) for q, r in zip(query_ids, ranking, strict=True)}
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: qrels[q] for q in query_ids}, {"ndcg_cut.10", "recall.100"}
    )
    per_query = evaluator.evaluate(run)
    n = len(query_ids)
    return {
        "ndcg@10": sum(v["ndcg_cut_10"] for v in per_query.values()) / n,
        "recall@100": sum(v["recall_100"] for v in per_query.values()) / n,
    }


def top_k_overlap(
    a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]], k: int = 10
) -> np.ndarray:
    """Per query: |top-k(a) ∩ top-k(b)| / k."""
    return np.array(
        [
            len({d for d, _ in ra[:k]} & {d for d, _ in rb[:k]}) / k
            for ra, rb in zip(a, b, strict=True)
        ]
    )


def model_key(*names: str | None) -> str | None:
    """The PUBLISHED_NDCG10 model key that one of `names` (a hub id, a folder path) refers to."""
    known = {m for m, _ in PUBLISHED_NDCG10}
    for name in names:
        if not name:
            continue
        flat = str(name).lower().replace("_", "-")
        for key in sorted(known, key=len, reverse=True):
            if key in flat:
                return key
    return None


def published_ndcg10(model: str | None, dataset: str) -> float | None:
    return PUBLISHED_NDCG10.get((model or "", dataset.lower()))


def embed_in_chunks(
    embed: Callable[[list[str]], np.ndarray],
    texts: list[str],
    *,
    chunk: int = 256,
    desc: str = "",
    progress: bool = False,
) -> np.ndarray:
    """Call `embed` on chunks of `texts`, longest first (little padding for engines that do not
    sort), with a progress bar; rows come back in input order."""
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    parts = []
    with tqdm(total=len(texts), desc=desc, disable=not progress, unit="text", leave=False) as bar:
        for start in range(0, len(texts), chunk):
            part = [texts[i] for i in order[start : start + chunk]]
            parts.append(np.asarray(embed(part), dtype=np.float32))
            bar.update(len(part))
    out = np.empty_like(np.concatenate(parts))
    out[order] = np.concatenate(parts)
    return out
