"""Random checkpoints written in the hub's layout (`write_checkpoint`): the embedding models
whose head and tokenizer come from the checkpoint folder (`random:xlm-roberta-tiny`,
`random:embeddinggemma-tiny`, `random:gemma3-stress`) and the Qwen3 rerankers
(`random:qwen3-reranker-*`).

Each is a complete folder as the hub ships it: config.json, sharded bf16 safetensors with the
published key names and an index, and a tokenizer: trained here with the `tokenizers` library
(XLM-R: Unigram with `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3; Gemma: byte-level BPE with
`<pad>`=0, `<eos>`=1, `<bos>`=2, `<unk>`=3, adding `<bos>` ... `<eos>`), or for a reranker the
real Qwen3-Reranker tokenizer (../shared, or --tokenizer). Embedding folders also get the
sentence-transformers files (modules.json, 1_Pooling, Dense folders, Normalize,
config_sentence_transformers.json, sentence_bert_config.json). Export resolves them as folders,
and the tests load the same folder with SentenceTransformer or transformers. Never downloaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..weights import InitFn, RandomSource, normal
from .qwen3 import reranker_source
from .spec import RandomModel

# A small multilingual sample the tokenizers are trained on (deterministic, in-process).
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of China? Beijing is the capital of China.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Die Hauptstadt von Deutschland ist Berlin, eine Stadt mit vielen Museen.",
    "La capitale de la France est Paris, sur la Seine.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "中国的首都是北京。北京是一座历史悠久的城市。",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "Explain how photosynthesis turns light into chemical energy in plants.",
    "search result query document title text retrieval embedding model token",
] + [f"token{i} number {i} item {i * 7 % 13}" for i in range(200)]

ST_DENSE_IDENTITY = "torch.nn.modules.linear.Identity"
GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Retrieval": "task: search result | query: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}


# -- tokenizers -------------------------------------------------------------------------------


def _xlmr_tokenizer() -> Any:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    # the Unigram trainer is not deterministic from run to run, so the pieces and scores are
    # counted here: every character, and the most frequent word pieces (log-probabilities)
    tok = Tokenizer(models.Unigram(_unigram_vocab(["<s>", "<pad>", "</s>", "<unk>"]), unk_id=3))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])  # 0, 1, 2, 3, last
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
    }  # fmt: skip
    return tok, config


def _unigram_vocab(special: list[str], size: int = 600) -> list[tuple[str, float]]:
    counts: dict[str, int] = {}
    for text in CORPUS:
        for word in text.split():
            word = "▁" + word
            for n in range(1, min(len(word), 6) + 1):
                for i in range(len(word) - n + 1):
                    counts[word[i : i + n]] = counts.get(word[i : i + n], 0) + 1
    total = sum(counts.values())
    chars = sorted(p for p in counts if len(p) == 1)
    pieces = sorted((p for p in counts if len(p) > 1), key=lambda p: (-counts[p], p))
    pieces = pieces[: size - len(special) - len(chars)]
    vocab = [(t, 0.0) for t in special]
    vocab += [(p, math.log(counts[p] / total)) for p in chars + pieces]
    return vocab


def _gemma_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>",
        special_tokens=[("<bos>", 2), ("<eos>", 1)],
    )  # fmt: skip
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "padding_side": "right",
    }  # fmt: skip
    return tok, config


TOKENIZERS: dict[str, Callable[[], Any]] = {
    "xlm-roberta": _xlmr_tokenizer,
    "gemma3": _gemma_tokenizer,
}


# -- weights ----------------------------------------------------------------------------------


def _lin(fan_in: int) -> InitFn:
    return normal(fan_in**-0.5)


def xlmr_weight_spec(cfg: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], InitFn]]:
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    ln_w, bias = normal(0.15, mean=1.0), normal(0.1)
    spec: dict[str, tuple[tuple[int, ...], InitFn]] = {
        "embeddings.word_embeddings.weight": ((cfg["vocab_size"], h), normal(1.0)),
        "embeddings.position_embeddings.weight": ((cfg["max_position_embeddings"], h), normal(0.5)),
        "embeddings.token_type_embeddings.weight": ((cfg["type_vocab_size"], h), normal(0.5)),
        "embeddings.LayerNorm.weight": ((h,), ln_w),
        "embeddings.LayerNorm.bias": ((h,), bias),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, (n_out, n_in) in {
            "attention.self.query": (h, h), "attention.self.key": (h, h),
            "attention.self.value": (h, h), "attention.output.dense": (h, h),
            "intermediate.dense": (f, h), "output.dense": (h, f),
        }.items():  # fmt: skip
            spec[p + name + ".weight"] = ((n_out, n_in), _lin(n_in))
            spec[p + name + ".bias"] = ((n_out,), bias)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            spec[p + ln + ".weight"] = ((h,), ln_w)
            spec[p + ln + ".bias"] = ((h,), bias)
    spec["pooler.dense.weight"] = ((h, h), _lin(h))
    spec["pooler.dense.bias"] = ((h,), bias)
    return spec


def gemma3_weight_spec(cfg: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], InitFn]]:
    h, f, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    norm = normal(0.15)  # Gemma's RMSNorm scales by (1 + weight): weights sit around 0
    spec: dict[str, tuple[tuple[int, ...], InitFn]] = {
        "embed_tokens.weight": ((cfg["vocab_size"], h), normal(h**-0.5)),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        spec.update({
            p + "input_layernorm.weight": ((h,), norm),
            p + "self_attn.q_proj.weight": ((q, h), _lin(h)),
            p + "self_attn.k_proj.weight": ((kv, h), _lin(h)),
            p + "self_attn.v_proj.weight": ((kv, h), _lin(h)),
            p + "self_attn.o_proj.weight": ((h, q), _lin(q)),
            p + "self_attn.q_norm.weight": ((d,), norm),
            p + "self_attn.k_norm.weight": ((d,), norm),
            p + "post_attention_layernorm.weight": ((h,), norm),
            p + "pre_feedforward_layernorm.weight": ((h,), norm),
            p + "post_feedforward_layernorm.weight": ((h,), norm),
            p + "mlp.gate_proj.weight": ((f, h), _lin(h)),
            p + "mlp.up_proj.weight": ((f, h), _lin(h)),
            p + "mlp.down_proj.weight": ((h, f), _lin(f)),
        })  # fmt: skip
    spec["norm.weight"] = ((h,), norm)
    return spec


WEIGHT_SPECS = {"xlm-roberta": xlmr_weight_spec, "gemma3": gemma3_weight_spec}

# Gemma stress: a constant embedding channel drives one MLP neuron per layer; its down
# projection writes ~29k (below fp16's 65,504) on one residual channel, and the post-FFN norm's
# (1 + weight) keeps it there, so three layers push the residual stream past 85k.
STRESS_IN, STRESS_OUT, STRESS_NEURON = 3, 7, 5


def _plant_gemma_stress(source: RandomSource, cfg: dict[str, Any]) -> None:
    h = cfg["hidden_size"]

    def set_at(index: tuple[int, ...], value: float) -> Callable[[np.ndarray], np.ndarray]:
        def fn(w: np.ndarray) -> np.ndarray:
            w[index] = value
            return w

        return fn

    source.override("embed_tokens.weight", lambda w: _column(w, STRESS_IN, 40.0 / h**0.5))
    for i in range(min(3, cfg["num_hidden_layers"])):
        p = f"layers.{i}."
        src = STRESS_IN if i == 0 else STRESS_OUT
        source.override(p + "mlp.gate_proj.weight", set_at((STRESS_NEURON, src), 2.0))
        source.override(p + "mlp.up_proj.weight", set_at((STRESS_NEURON, src), 2.0))
        source.override(p + "mlp.down_proj.weight", set_at((STRESS_OUT, STRESS_NEURON), 60.0))
        # post-FFN RMSNorm of a vector dominated by one channel gives ~sqrt(h) there
        source.override(
            p + "post_feedforward_layernorm.weight", set_at((STRESS_OUT,), 30000.0 / h**0.5)
        )

    def final_norm(w: np.ndarray) -> np.ndarray:
        w[[STRESS_IN, STRESS_OUT]] = -1.0 + 1e-6  # (1 + w) ~ 0: the direction comes from the rest
        return w

    source.override("norm.weight", final_norm)


def _column(w: np.ndarray, col: int, value: float) -> np.ndarray:
    w[:, col] = value
    return w


# -- base configs ------------------------------------------------------------------------------

XLMR_BASE: dict[str, Any] = {
    "architectures": ["XLMRobertaModel"],
    "model_type": "xlm-roberta",
    "attention_probs_dropout_prob": 0.1,
    "hidden_dropout_prob": 0.1,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "position_embedding_type": "absolute",
    "type_vocab_size": 1,
    "torch_dtype": "bfloat16",
}
GEMMA3_BASE: dict[str, Any] = {
    "architectures": ["Gemma3TextModel"],
    "model_type": "gemma3_text",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "hidden_activation": "gelu_pytorch_tanh",
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "use_bidirectional_attention": True,
    "torch_dtype": "bfloat16",
}
GEMMA_TINY = dict(
    GEMMA3_BASE,
    hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, query_pre_attn_scalar=48, num_hidden_layers=6, max_position_embeddings=2048,
    sliding_window=64,  # transformers uses 64 // 2 + 1 = 33 under bidirectional attention
    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
)  # fmt: skip


def hub_source(family: str, cfg: dict[str, Any], seed: int, stress: bool) -> RandomSource:
    source = RandomSource(WEIGHT_SPECS[family](cfg), seed=seed)
    if stress:
        _plant_gemma_stress(source, cfg)
    return source


def save_sharded(source: RandomSource, folder: Path, prefix: str = "", shards: int = 2) -> None:
    """bf16 safetensors in `shards` files of about equal bytes, and their index; every key
    but `lm_head.weight` gets `prefix` (Qwen3ForCausalLM's `model.`)."""
    from safetensors.numpy import save_file

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
        keys = {n: n if n == "lm_head.weight" else prefix + n for n in group}
        save_file({keys[n]: source.load(n) for n in group}, str(folder / file), {"format": "pt"})
        weight_map.update(dict.fromkeys(keys.values(), file))
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(folder / "model.safetensors.index.json", index)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_st_files(model: RandomModel, folder: Path, hidden: int) -> None:
    from safetensors.numpy import save_file

    from ..weights import fp32_to_bf16

    mod = "sentence_transformers.models."
    modules = [{"idx": 0, "name": "0", "path": "", "type": mod + "Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": mod + "Pooling"}]  # fmt: skip
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": model.pooling == "cls",
        "pooling_mode_mean_tokens": model.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })  # fmt: skip
    width = hidden
    rng = np.random.default_rng([model.seed, 17])
    for out in model.dense:
        i = len(modules)
        path = f"{i}_Dense"
        cfg = {"in_features": width, "out_features": out, "bias": False,
               "activation_function": ST_DENSE_IDENTITY}  # fmt: skip
        _write_json(folder / path / "config.json", cfg)
        w = rng.standard_normal((out, width), dtype=np.float32) * width**-0.5
        save_file({"linear.weight": fp32_to_bf16(w)}, str(folder / path / "model.safetensors"))
        modules.append({"idx": i, "name": str(i), "path": path, "type": mod + "Dense"})
        width = out
    i = len(modules)
    modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize", "type": mod + "Normalize"})
    (folder / f"{i}_Normalize").mkdir(exist_ok=True)
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": model.max_seq_length, "do_lower_case": False})  # fmt: skip
    _write_json(folder / "config_sentence_transformers.json", {
        "prompts": dict(model.prompts), "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })  # fmt: skip


RERANKER_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
SHARED_RERANKER = Path("qwen3-reranker") / "0.6B"


def shared_tokenizer_dir() -> Path | None:
    """The reranker tokenizer in the shared reference folder, when it is there."""
    root = os.environ.get("QEXPORT_SHARED")
    candidates = [Path(root)] if root else []
    candidates.append(Path(__file__).resolve().parents[4] / "shared")
    for base in candidates:
        if (base / SHARED_RERANKER / "tokenizer.json").is_file():
            return base / SHARED_RERANKER
    return None


def write_reranker(
    model: RandomModel, folder: Path, cfg: dict[str, Any], tokenizer: Path | None
) -> None:
    """config.json with Qwen3ForCausalLM, the weights, and the real reranker tokenizer."""
    tok_dir = tokenizer or shared_tokenizer_dir()
    if tok_dir is None or not (tok_dir / "tokenizer.json").is_file():
        raise ValueError(
            f"random:{model.name} needs the Qwen3-Reranker tokenizer: pass --tokenizer FOLDER "
            "(with tokenizer.json), or set QEXPORT_SHARED to the shared/ folder"
        )
    save_sharded(reranker_source(cfg, model.seed), folder, prefix="model.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for file in RERANKER_TOKENIZER_FILES:
        if (tok_dir / file).is_file():
            shutil.copy2(tok_dir / file, folder / file)


def write_embedder(model: RandomModel, folder: Path, cfg: dict[str, Any]) -> None:
    """A trained tokenizer, the weights and the sentence-transformers files."""
    tok, tok_config = TOKENIZERS[model.family]()
    tok.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json",
                dict(tok_config, model_max_length=model.max_seq_length))  # fmt: skip
    cfg = dict(cfg, vocab_size=tok.get_vocab_size())
    _write_json(folder / "config.json", cfg)
    save_sharded(hub_source(model.family, cfg, model.seed, model.stress), folder)
    _write_st_files(model, folder, cfg["hidden_size"])
