"""Held-out texts for judging a quantized export: STS-B test sentences and SciFact documents
from the shared evaluation data (`../shared/data`).

These are for tests and benchmarks only. Calibration (SmoothQuant, GPTQ, the export's own
check) reads `qexport.texts.BUILTIN_TEXTS` or the user's --calibration file and never this
module, so no bar measured here is met on the texts it was tuned on;
tests/export/test_quantize_minilm.py checks that the two sets share no text.
"""

from __future__ import annotations

import json
from pathlib import Path

from .sts import load_sts


def held_out_texts(data: str | Path, *, sentences: int = 300, documents: int = 100) -> list[str]:
    """`sentences` STS-B test sentences (evenly spaced over both columns) followed by
    `documents` SciFact documents (title + abstract, evenly spaced over the corpus)."""
    data = Path(data)
    pool = load_sts(data / "stsb" / "test.tsv").sentences
    out = _spaced(pool, sentences)
    if documents:
        docs = []
        with open(data / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    d = json.loads(line)
                    docs.append((d.get("title", "") + " " + d.get("text", "")).strip())
        out += _spaced(docs, documents)
    return out


def _spaced(pool: list[str], n: int) -> list[str]:
    if n > len(pool):
        raise ValueError(f"asked for {n} held-out texts, the source has {len(pool)}")
    step = len(pool) / n
    return [pool[int(i * step)] for i in range(n)]
