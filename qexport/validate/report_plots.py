"""The plots of a validation report (matplotlib, PNG bytes): the per-text cosine distance
histogram (embeddings), throughput vs length and peak memory vs length (any task)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

# plot colours (matplotlib's tab10 blue and orange): onnxruntime, PyTorch
COLORS = {"onnxruntime": "#1f77b4", "pytorch": "#ff7f0e"}


def memory_by_length(sp: dict[str, Any], engine: str) -> dict[int, dict[str, float | None]]:
    """Peak RSS and GPU MB of `engine` per text length: the highest over that length's cells
    (None where not measured)."""
    out: dict[int, dict[str, float | None]] = {}
    for g in sp["grid"]:
        cell = g[engine]
        prev = out.get(g["length"], {"rss": None, "gpu": None})
        out[g["length"]] = {
            key: prev[key]
            if cell[field] is None
            else max(v for v in (prev[key], cell[field]) if v is not None)
            for key, field in (("rss", "rss_peak_mb"), ("gpu", "gpu_peak_mb"))
        }
    return out


def _floats(values: Iterable[Any]) -> list[float]:
    """None (not measured) as NaN, which matplotlib leaves out of a line."""
    return [float("nan") if v is None else float(v) for v in values]


def _png(plt: Any, fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Length on a log2 x axis, the labels, the legend."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)


def _cosine_histogram(plt: Any, r: dict[str, Any]) -> Any:
    import numpy as np

    if "fidelity" not in r:  # a task without per-row cosines
        return None
    cos = np.array([c for c in r["fidelity"]["per_text"]["cosines"] if c is not None], dtype=float)
    if not cos.size:
        return None
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
    return fig


def _throughput(plt: Any, sp: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    styles = ["-", "--", ":", "-."]
    for e in sp["engines"]:
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
    ax.set_yscale("log")
    _finish(
        ax,
        f"tokens per {sp.get('unit', 'text')}",
        "tokens / s",
        f"Throughput ({sp['device']}, median of {sp['repeats']})",
    )
    return fig


def _memory(plt: Any, sp: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for e in sp["engines"]:
        mem = memory_by_length(sp, e)
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
    unit = sp.get("unit", "text")
    _finish(ax, f"tokens per {unit} (largest batch so far)", "MB", "Peak memory vs length")
    return fig


def plots(r: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by name: cosine histogram, and with a speed run throughput and memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig = _cosine_histogram(plt, r)
    if fig is not None:
        out["cosine_histogram"] = _png(plt, fig)
    sp = r.get("speed")
    if sp:
        out["throughput_vs_length"] = _png(plt, _throughput(plt, sp))
        out["memory_vs_length"] = _png(plt, _memory(plt, sp))
    return out
