"""Built-in random Qwen3-Reranker checkpoints (`random:qwen3-reranker-<size>`).

Unlike the embedding random models (weights generated while the graph is written), a random
reranker is first written the way the hub ships Qwen/Qwen3-Reranker-*: `config.json` with
`Qwen3ForCausalLM`, bf16 safetensors in shards with `model.safetensors.index.json`, keys
`model.*` (and `lm_head.weight` only when the embeddings are untied), plus the real reranker
tokenizer. The export then reads that folder like any local checkpoint, and the PyTorch
reference (the model card's recipe) loads the very same folder with transformers.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .random_models import qwen3_config, qwen3_weight_spec
from .weights import RandomSource, normal

# the published Qwen/Qwen3-Reranker-0.6B config.json (../shared/qwen3-reranker/0.6B)
RERANKER_BASE: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 40960,
    "model_type": "qwen3",
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151669,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
SHARED_SUBDIR = Path("qwen3-reranker") / "0.6B"


@dataclass(frozen=True)
class RandomReranker:
    name: str
    full_config: dict[str, Any]  # config.json with all the layers
    seed: int = 0

    @property
    def layers(self) -> int:
        return int(self.full_config["num_hidden_layers"])

    def config(self, layers: int | None = None) -> dict[str, Any]:
        n = self.layers if layers is None else layers
        return dict(self.full_config, num_hidden_layers=n, max_window_layers=n)


RERANKERS: dict[str, RandomReranker] = {
    m.name: m
    for m in (
        # 3 layers, hidden 96, 3/1 heads of 48 (q width 144 != hidden), FFN 160
        RandomReranker("qwen3-reranker-tiny", qwen3_config(RERANKER_BASE, (3, 96, 3, 1, 48, 160))),
        # the architectures of Qwen3-Reranker-0.6B and 4B
        RandomReranker(
            "qwen3-reranker-0.6b", qwen3_config(RERANKER_BASE, (28, 1024, 16, 8, 128, 3072))
        ),
        RandomReranker(
            "qwen3-reranker-4b", qwen3_config(RERANKER_BASE, (36, 2560, 32, 8, 128, 9728))
        ),
    )
}


def shared_tokenizer_dir() -> Path | None:
    """The reranker tokenizer in the shared reference folder, when it is there."""
    root = os.environ.get("QEXPORT_SHARED")
    candidates = [Path(root)] if root else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared")
    for base in candidates:
        folder = base / SHARED_SUBDIR
        if (folder / "tokenizer.json").is_file():
            return folder
    return None


def _spec(cfg: dict[str, Any]) -> dict[str, Any]:
    spec = qwen3_weight_spec(cfg)
    h = cfg["hidden_size"]
    # rows of std 1/sqrt(hidden): the yes-no logit of a unit-RMS hidden state is O(1), so
    # random rerankers give scores spread over (0, 1) rather than saturated at 0 or 1
    spec["embed_tokens.weight"] = ((cfg["vocab_size"], h), normal(h**-0.5))
    if not cfg["tie_word_embeddings"]:
        spec["lm_head.weight"] = ((cfg["vocab_size"], h), normal(h**-0.5))
    return spec


def write_random_reranker(
    name: str,
    folder: str | Path,
    *,
    layers: int | None = None,
    tokenizer: str | Path | None = None,
    shards: int = 2,
) -> Path:
    """Write `random:<name>` to `folder` as a hub-style checkpoint; returns the folder."""
    from safetensors.numpy import save_file

    if name not in RERANKERS:
        raise ValueError(f"unknown random reranker {name!r}; built in: {', '.join(RERANKERS)}")
    model = RERANKERS[name]
    if layers is not None and not 1 <= layers <= model.layers:
        raise ValueError(f"layers must be in 1..{model.layers}, got {layers}")
    tok_dir = Path(tokenizer).expanduser() if tokenizer else shared_tokenizer_dir()
    if tok_dir is None or not (tok_dir / "tokenizer.json").is_file():
        raise ValueError(
            f"random:{name} needs the Qwen3-Reranker tokenizer: pass --tokenizer FOLDER "
            "(with tokenizer.json), or set QEXPORT_SHARED to the shared/ folder"
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config(layers)
    source = RandomSource(_spec(cfg), seed=model.seed)
    names = source.keys()
    sizes = [int(np.prod(source.shape(n))) * 2 for n in names]
    per_shard = -(-sum(sizes) // shards)
    groups: list[list[str]] = [[]]
    used = 0
    for n, size in zip(names, sizes, strict=True):
        if groups[-1] and used + size > per_shard and len(groups) < shards:
            groups.append([])
            used = 0
        groups[-1].append(n)
        used += size
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        keys = {n: n if n == "lm_head.weight" else f"model.{n}" for n in group}
        save_file({keys[n]: source.load(n) for n in group}, str(out / file), {"format": "pt"})
        weight_map.update(dict.fromkeys(keys.values(), file))
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for file in TOKENIZER_FILES:
        if (tok_dir / file).is_file():
            shutil.copy2(tok_dir / file, out / file)
    return out
