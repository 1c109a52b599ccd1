"""Every built-in random model (`random:<name>`) in one registry, and its one dispatcher.

A random model is an exact architecture with seeded weights, made locally so that everything
runs offline (never downloaded). Each entry names its task (`qexport.tasks`), its family and
its layout: "weights" (Qwen3 embedding shapes: the weights are generated while the graph is
written, the family's default head and a byte-level tokenizer) or "hub" (written first as a
checkpoint folder the way the hub ships it, `hub.py`, then read like any local folder, so the
PyTorch references load the very same folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..weights import RandomSource
from .hub import GEMMA_PROMPTS, GEMMA_TINY, XLMR_BASE, write_embedder, write_reranker
from .qwen3 import QWEN3_BASE, RERANKER_BASE, qwen3_config, qwen3_source
from .spec import RandomModel


def _qwen3(name: str, shape: tuple[int, int, int, int, int, int], **kw: Any) -> RandomModel:
    stress = bool(kw.pop("stress", False))
    return RandomModel(name, "embed", "qwen3", "weights", qwen3_config(QWEN3_BASE, shape, **kw),
                       stress=stress)  # fmt: skip


def _reranker(name: str, shape: tuple[int, int, int, int, int, int]) -> RandomModel:
    return RandomModel(name, "rerank", "qwen3", "hub", qwen3_config(RERANKER_BASE, shape))


def _gemma(name: str, stress: bool = False) -> RandomModel:
    return RandomModel(name, "embed", "gemma3", "hub", GEMMA_TINY, stress=stress, pooling="mean",
                       dense=(512, 128), prompts=GEMMA_PROMPTS, max_seq_length=2048)  # fmt: skip


_XLMR_TINY = dict(XLMR_BASE, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                  num_hidden_layers=2, max_position_embeddings=8194)  # fmt: skip

REGISTRY: dict[str, RandomModel] = {
    m.name: m
    for m in (
        # shape = (layers, hidden, heads, kv heads, head_dim, ffn)
        _qwen3("qwen3-tiny", (2, 128, 4, 2, 32, 256)),
        # qwen3-tiny's shape, 4 layers, with massive residual activations (> fp16 max)
        _qwen3("qwen3-stress", (4, 128, 4, 2, 32, 256), stress=True),
        # the architectures of Qwen3-Embedding-0.6B, 4B, 8B
        _qwen3("qwen3-embedding-0.6b", (28, 1024, 16, 8, 128, 3072)),
        _qwen3("qwen3-embedding-4b", (36, 2560, 32, 8, 128, 9728), vocab_size=151665),
        _qwen3(
            "qwen3-embedding-8b",
            (36, 4096, 32, 8, 128, 12288),
            vocab_size=151665,
            tie_word_embeddings=False,
        ),
        RandomModel(
            "xlm-roberta-tiny",
            "embed",
            "xlm-roberta",
            "hub",
            _XLMR_TINY,
            pooling="cls",
            max_seq_length=8192,
        ),
        _gemma("embeddinggemma-tiny"),
        _gemma("gemma3-stress", stress=True),
        # 3 layers, hidden 96, 3/1 heads of 48 (q width 144 != hidden), FFN 160
        _reranker("qwen3-reranker-tiny", (3, 96, 3, 1, 48, 160)),
        # the architectures of Qwen3-Reranker-0.6B and 4B
        _reranker("qwen3-reranker-0.6b", (28, 1024, 16, 8, 128, 3072)),
        _reranker("qwen3-reranker-4b", (36, 2560, 32, 8, 128, 9728)),
    )
}


def lookup(spec: str) -> RandomModel:
    """`random:<name>` (or the bare name) -> its entry; ValueError naming the built-in ones."""
    name = spec.removeprefix("random:")
    if name not in REGISTRY:
        raise ValueError(f"unknown random model {name!r}; built in: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def random_weights(model: RandomModel) -> RandomSource:
    """The weights of a "weights"-layout model, generated on demand."""
    if model.layout != "weights":
        raise ValueError(f"random:{model.name} is written as a checkpoint folder first")
    return qwen3_source(model.config, model.seed, model.stress)


def write_checkpoint(
    name: str,
    folder: str | Path,
    *,
    layers: int | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write `random:<name>` to `folder` as a hub checkpoint (any layout: a "weights" model
    gets no tokenizer); returns the folder. `layers` keeps the first layers (a reranker's
    PyTorch reference for a layer-truncated export); `tokenizer`: a reranker's tokenizer
    folder instead of the shared one."""
    model = lookup(name)
    cfg = model.config_for(layers)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if model.task == "rerank":
        write_reranker(model, out, cfg, Path(tokenizer).expanduser() if tokenizer else None)
    elif model.layout == "hub":
        write_embedder(model, out, cfg)
    else:
        raise ValueError(f"random:{name} has no checkpoint-folder form (its weights are made "
                         "while the graph is written)")  # fmt: skip
    return out
