"""Semantic textual similarity scored the MTEB way: Spearman correlation between the cosine
similarity of each sentence pair's embeddings and the gold score."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util import row_cosines

# Published STS Benchmark test Spearman (MTEB results).
PUBLISHED_SPEARMAN: dict[tuple[str, str], float] = {
    ("all-minilm-l6-v2", "stsb"): 0.82032,
    ("qwen3-embedding-0.6b", "stsb"): 0.911297,
}


@dataclass
class StsPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # gold similarity per pair

    @property
    def sentences(self) -> list[str]:
        """Both columns, first then second: 2 x pairs sentences."""
        return self.sentences1 + self.sentences2


def load_sts(path: str | Path) -> StsPairs:
    """A TSV with header `sentence1 sentence2 score` (csv quoting, as ../shared/data/stsb)."""
    path = Path(path)
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header != ["sentence1", "sentence2", "score"]:
            raise ValueError(f"{path}: expected header sentence1, sentence2, score; got {header}")
        for n, row in enumerate(reader, 2):
            if len(row) != 3:
                raise ValueError(f"{path}:{n}: expected 3 tab-separated columns, got {len(row)}")
            s1.append(row[0])
            s2.append(row[1])
            gold.append(float(row[2]))
    return StsPairs(s1, s2, np.asarray(gold, dtype=np.float64))


def cosine_spearman(emb1: np.ndarray, emb2: np.ndarray, gold: np.ndarray) -> float:
    """Spearman(gold, cosine(emb1[i], emb2[i])), as MTEB's STS evaluator ("cosine_spearman")."""
    from scipy.stats import spearmanr

    return float(spearmanr(gold, row_cosines(emb1, emb2)).statistic)
