"""The checks of an embedding artifact (task "embed"): per-text fidelity against the PyTorch
reference (sentence-transformers, or the family's last-token card recipe: `reference.py`),
the artifact against itself (batched vs alone, padded among long texts), Matryoshka sizes,
the instruction path, the model card's known answer, and retrieval agreement on a BEIR set.

`measure` runs them into the report's sections; `CHECKS` says which report value each
threshold key reads (`checks.evaluate`).
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest
from ..runtime import Embedder
from ..texts import BUILTIN_TEXTS
from . import fidelity as fid
from .checks import Check, Measured, ValidateOptions, finite, keys
from .parity import load_reference

_FID = ("fidelity",)
CHECKS: list[Check] = [
    finite(("fidelity", "per_text"), "embedding", "nonfinite_indices"),
    Check("cosine_min", ("fidelity", "per_text"), "cosine_min", keys(worst_texts="worst")),
    Check("cosine_mean", ("fidelity", "per_text"), "cosine_mean"),
    Check("max_abs_diff", ("fidelity", "per_text"), "max_abs_diff"),
    Check(
        "batch_cosine_min",
        (*_FID, "batch_vs_single"),
        "cosine_min",
        keys("worst_text", "max_abs_diff"),
    ),
    Check(
        "padding_cosine_min",
        (*_FID, "padding"),
        "cosine_min",
        keys("worst_text", "padded_to_tokens"),
    ),
    Check("matryoshka_cosine_min", (*_FID, "matryoshka"), "cosine_min", keys("worst_dim")),
    Check("instruction_cosine_min", (*_FID, "instruction"), "cosine_min", keys("instruction")),
    Check("known_answer_tol", (*_FID, "known_answer"), "max_error", keys("scores", "expected")),
    Check(
        "ndcg10_drop_max",
        ("retrieval",),
        "ndcg10_drop",
        lambda r: {"onnxruntime": r["onnxruntime"]["ndcg@10"], "pytorch": r["pytorch"]["ndcg@10"]},
        optional=True,
    ),
    Check(
        "top10_overlap_min",
        ("retrieval",),
        "top10_overlap_mean",
        keys("worst_queries"),
        optional=True,
    ),
]


def measure(
    artifact: Path, manifest: Manifest, opts: ValidateOptions, stack: ExitStack
) -> Measured:
    """Fidelity (and retrieval with a dataset) of the artifact against its reference."""
    texts = list(opts.texts) if opts.texts is not None else list(BUILTIN_TEXTS)
    if not texts:
        raise ValueError("no texts to validate with")
    emb = Embedder(artifact, device=opts.device)
    ref, ref_device, ref_note = load_reference(opts.reference, artifact, opts.device)
    notes = [ref_note] if ref_note else []
    kind = getattr(getattr(ref, "src", None), "kind", "")
    m = manifest
    parts: dict[str, Any] = {
        "artifact": {
            "embedding_dim": m.embedding_dim,
            "allowed_dims": m.allowed_dims,
            "pooling": m.pooling,
            "instruction_template": m.instruction_template,
        },
        "reference": {"model": opts.reference, "device": ref_device, "dtype": "fp32"},
        "texts": {"source": opts.texts_source, "count": len(texts)},
        "fidelity": _fidelity(emb, ref, texts, opts, kind),
        "retrieval": None,
    }
    if "skipped" in parts["fidelity"]["known_answer"]:
        notes.append("known-answer check: " + parts["fidelity"]["known_answer"]["skipped"])
    if opts.dataset is not None:
        parts["retrieval"] = _retrieval(emb, ref, opts)
        sub = parts["retrieval"]["subsampled"]
        if sub:
            from .report import subsample_text

            notes.append(f"retrieval ran on a subsample: {subsample_text(sub)}")
    # the speed runs load their own engines in subprocesses: the reference goes now
    return Measured(parts, emb.providers, ref_device, emb.encoder, opts.reference, notes)


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


def summary(r: dict[str, Any]) -> list[str]:
    """The command's lines: fidelity, then retrieval when it ran."""
    pt = r["fidelity"]["per_text"]
    providers = ",".join(r["environment"]["onnxruntime_providers_used"])
    lines = [
        f"{pt['texts']} texts: cosine min {_f(pt['cosine_min'])}, mean {_f(pt['cosine_mean'])} "
        f"(threshold {r['thresholds']['cosine_min']}, precision {r['artifact']['precision']}, "
        f"providers {providers})"
    ]
    if r["retrieval"]:
        rt = r["retrieval"]
        lines.append(
            f"retrieval {rt['dataset']}: nDCG@10 {rt['onnxruntime']['ndcg@10']:.5f} (PyTorch "
            f"{rt['pytorch']['ndcg@10']:.5f}), top-10 overlap {rt['top10_overlap_mean']:.3f}"
        )
    return lines


def _f(v: object) -> str:
    return f"{v:.6f}" if isinstance(v, float) else str(v)
