"""Built-in random models (`random:<name>`): exact Qwen3 architectures with seeded weights,
made locally so that everything runs offline. Never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .weights import RandomSource, normal

QWEN3_BASE: dict[str, Any] = {
    "architectures": ["Qwen3Model"],
    "model_type": "qwen3",
    "attention_bias": False,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "rope_scaling": None,
    "vocab_size": 151669,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_sliding_window": False,
    "sliding_window": None,
}


@dataclass(frozen=True)
class RandomModel:
    name: str
    config: dict[str, Any]
    seed: int = 0
    stress: bool = False  # plant massive residual activations (fp16 overflow stress)


# config.json keys of a Qwen3 size, in the order of `qwen3_config`'s shape
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size")  # fmt: skip


def qwen3_config(
    base: dict[str, Any], shape: tuple[int, int, int, int, int, int], **kw: Any
) -> dict[str, Any]:
    """`base` with one Qwen3 size: shape = (layers, hidden, heads, kv heads, head_dim, ffn)."""
    cfg = dict(base)
    cfg.update(zip(SHAPE_KEYS, shape, strict=True))
    cfg["max_window_layers"] = shape[0]
    cfg.update(kw)
    return cfg


REGISTRY: dict[str, RandomModel] = {
    m.name: m
    for m in (
        # 2 layers, hidden 128, 4/2 heads
        RandomModel("qwen3-tiny", qwen3_config(QWEN3_BASE, (2, 128, 4, 2, 32, 256))),
        # qwen3-tiny's shape, 4 layers, with massive residual activations (> fp16 max)
        RandomModel("qwen3-stress", qwen3_config(QWEN3_BASE, (4, 128, 4, 2, 32, 256)), stress=True),
        # the architectures of Qwen3-Embedding-0.6B, 4B, 8B
        RandomModel("qwen3-embedding-0.6b", qwen3_config(QWEN3_BASE, (28, 1024, 16, 8, 128, 3072))),
        RandomModel(
            "qwen3-embedding-4b",
            qwen3_config(QWEN3_BASE, (36, 2560, 32, 8, 128, 9728), vocab_size=151665),
        ),
        RandomModel(
            "qwen3-embedding-8b",
            qwen3_config(
                QWEN3_BASE,
                (36, 4096, 32, 8, 128, 12288),
                tie_word_embeddings=False,
                vocab_size=151665,
            ),
        ),
    )
}

# Where the stress model plants its outlier: channel read by the MLP, channel written.
STRESS_IN_CHANNEL = 3
STRESS_OUT_CHANNEL = 7
STRESS_NEURON = 5


def qwen3_weight_spec(cfg: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Tensor names (Qwen3Model state_dict, no `model.` prefix) -> (shape, init)."""
    h, d = cfg["hidden_size"], cfg["head_dim"]
    q, kv, f = (
        cfg["num_attention_heads"] * d,
        cfg["num_key_value_heads"] * d,
        cfg["intermediate_size"],
    )

    # 1/sqrt(fan_in): every sublayer moves the residual by O(1), so texts that share the
    # pooled end token still get clearly different vectors (0.02 would leave them ~0.99 alike)
    def lin(fan_in: int):  # type: ignore[no-untyped-def]
        return normal(fan_in**-0.5)

    norm = normal(0.15, mean=1.0)  # not all ones, so a swapped norm weight is caught
    spec: dict[str, tuple[tuple[int, ...], Any]] = {
        "embed_tokens.weight": ((cfg["vocab_size"], h), normal(1.0))
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        spec.update(
            {
                p + "input_layernorm.weight": ((h,), norm),
                p + "self_attn.q_proj.weight": ((q, h), lin(h)),
                p + "self_attn.k_proj.weight": ((kv, h), lin(h)),
                p + "self_attn.v_proj.weight": ((kv, h), lin(h)),
                p + "self_attn.o_proj.weight": ((h, q), lin(q)),
                p + "self_attn.q_norm.weight": ((d,), norm),
                p + "self_attn.k_norm.weight": ((d,), norm),
                p + "post_attention_layernorm.weight": ((h,), norm),
                p + "mlp.gate_proj.weight": ((f, h), lin(h)),
                p + "mlp.up_proj.weight": ((f, h), lin(h)),
                p + "mlp.down_proj.weight": ((h, f), lin(f)),
            }
        )
    spec["norm.weight"] = ((h,), norm)
    return spec


def _plant_stress(source: RandomSource, cfg: dict[str, Any]) -> None:
    """Massive activations as in real Qwen models: every token carries a large constant on one
    embedding channel; three MLPs turn it into +30k each on another residual channel, so the
    residual stream passes 90k (fp16 max is 65504) while every single MatMul output stays
    below it. The final norm gives that channel a small weight, so the embedding's direction
    comes from the ordinary channels and a wrong residual shows up in the cosine."""

    def embed(w: np.ndarray) -> np.ndarray:
        w[:, STRESS_IN_CHANNEL] = 40.0
        return w

    source.override("embed_tokens.weight", embed)
    n_planted = min(3, cfg["num_hidden_layers"])
    for i in range(n_planted):
        p = f"layers.{i}.mlp."
        # layer 0 reads the embedding's constant channel; later layers feed on the outlier itself
        src = STRESS_IN_CHANNEL if i == 0 else STRESS_OUT_CHANNEL

        def gate_up(w: np.ndarray, src: int = src) -> np.ndarray:
            w[STRESS_NEURON, src] = 2.0
            return w

        def down(w: np.ndarray) -> np.ndarray:
            w[STRESS_OUT_CHANNEL, STRESS_NEURON] = 60.0
            return w

        source.override(p + "gate_proj.weight", gate_up)
        source.override(p + "up_proj.weight", gate_up)
        source.override(p + "down_proj.weight", down)

    def final_norm(w: np.ndarray) -> np.ndarray:
        w[STRESS_OUT_CHANNEL] = 1e-6
        w[STRESS_IN_CHANNEL] = 1e-6
        return w

    source.override("norm.weight", final_norm)


def random_source(model: RandomModel, cfg: dict[str, Any] | None = None) -> RandomSource:
    cfg = cfg or model.config
    source = RandomSource(qwen3_weight_spec(cfg), seed=model.seed)
    if model.stress:
        _plant_stress(source, cfg)
    return source
