"""Pass/fail thresholds of `qexport validate`: defaults per precision, overridable KEY=VALUE.

Cosine thresholds derive from the precision's fidelity bar (`qexport.export.bars.BARS`: the
minimum per-text cosine against the PyTorch reference): the artifact must agree with itself
(batched vs alone, padded among long texts) as well as it agrees with the reference,
Matryoshka slices may lose twice the cosine error of the full vector, and retrieval may lose a
precision-dependent nDCG@10.
"""

from __future__ import annotations

from ..export.bars import BARS

# key -> (comparison, meaning); ">=" metrics must reach the threshold, "<=" stay below it
KEYS: dict[str, tuple[str, str]] = {
    "cosine_min": (">=", "lowest per-text cosine, artifact vs reference"),
    "cosine_mean": (">=", "mean per-text cosine, artifact vs reference"),
    "max_abs_diff": ("<=", "largest absolute difference of any embedding value"),
    "batch_cosine_min": (">=", "lowest cosine of a text batched vs embedded alone"),
    "padding_cosine_min": (">=", "lowest cosine of a short text padded among long ones vs alone"),
    "matryoshka_cosine_min": (">=", "lowest cosine at any allowed Matryoshka size"),
    "instruction_cosine_min": (">=", "lowest cosine of instructed queries vs reference"),
    "known_answer_tol": ("<=", "largest error against the model card's score matrix"),
    "ndcg10_drop_max": ("<=", "nDCG@10 of the reference minus that of the artifact"),
    "top10_overlap_min": (">=", "mean top-10 overlap per query, artifact vs reference"),
}

NDCG_DROP = {"fp32": 0.002, "fp16": 0.005, "bf16": 0.01, "int8": 0.01, "int4": 0.02}
TOP10_OVERLAP = {"fp32": 0.95, "fp16": 0.9, "bf16": 0.85, "int8": 0.85, "int4": 0.75}


def default_thresholds(precision: str) -> dict[str, float | None]:
    """Defaults for an artifact of `precision` (None: reported, not enforced)."""
    if precision not in BARS:
        raise ValueError(f"no default thresholds for precision {precision!r}")
    cos = BARS[precision]
    family = "int8" if precision.startswith("int8") else precision
    return {
        "cosine_min": cos,
        "cosine_mean": round(1 - (1 - cos) / 2, 6),
        "max_abs_diff": None,
        "batch_cosine_min": cos,
        "padding_cosine_min": cos,
        "matryoshka_cosine_min": round(1 - 2 * (1 - cos), 6),
        "instruction_cosine_min": cos,
        "known_answer_tol": 2e-3,
        "ndcg10_drop_max": NDCG_DROP[family] * (2 if precision == "int8-dynamic" else 1),
        "top10_overlap_min": TOP10_OVERLAP[family],
    }


def parse_overrides(spec: str | None) -> dict[str, float | None]:
    """'cosine_min=0.999,max_abs_diff=0.01' -> dict; 'key=none' switches a check off."""
    out: dict[str, float | None] = {}
    if not spec:
        return out
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"threshold {item!r} is not KEY=VALUE")
        if key not in KEYS:
            raise ValueError(f"unknown threshold {key!r}; known: {', '.join(KEYS)}")
        out[key] = threshold_value(key, value)
    return out


def threshold_value(key: str, value: str) -> float | None:
    """The VALUE of KEY=VALUE: a number, or None for 'none' / 'off' (the check switched off)."""
    if value.strip().lower() in ("none", "off"):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"threshold {key}={value!r} is not a number") from None


def passes(key: str, value: float, threshold: float) -> bool:
    op = KEYS[key][0]
    return value >= threshold if op == ">=" else value <= threshold
