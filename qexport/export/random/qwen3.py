"""Qwen3 shapes for the random models (`random/__init__.py` lists them): the configs, and the
seeded weights of an embedding model (generated while the graph is written) or of a reranker
(written as a hub checkpoint first, `hub.write_checkpoint`). Never downloaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..weights import RandomSource, normal

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


def qwen3_source(cfg: dict[str, Any], seed: int, stress: bool = False) -> RandomSource:
    """An embedding model's weights (Qwen3Model names)."""
    source = RandomSource(qwen3_weight_spec(cfg), seed=seed)
    if stress:
        _plant_stress(source, cfg)
    return source


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


def reranker_source(cfg: dict[str, Any], seed: int) -> RandomSource:
    """A reranker's weights (Qwen3ForCausalLM: `lm_head.weight` only when untied)."""
    spec = qwen3_weight_spec(cfg)
    h = cfg["hidden_size"]
    # rows of std 1/sqrt(hidden): the yes-no logit of a unit-RMS hidden state is O(1), so
    # random rerankers give scores spread over (0, 1) rather than saturated at 0 or 1
    spec["embed_tokens.weight"] = ((cfg["vocab_size"], h), normal(h**-0.5))
    if not cfg["tie_word_embeddings"]:
        spec["lm_head.weight"] = ((cfg["vocab_size"], h), normal(h**-0.5))
    return RandomSource(spec, seed=seed)
