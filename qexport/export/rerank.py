"""The Qwen3-Reranker task's specifics: the model card's prompt and yes/no tokens, how a
checkpoint is recognised as a reranker, the score head's vector, and the pairs its int8 check
runs. Everything else (resolve, graph, tokenizer, quantize, save, verify, manifest) is the one
export pipeline (`api.py`); the graph head is `heads.HEADS["rerank"]`.

The model card scores a pair by the causal LM's next-token logits at the last position:
softmax([logit(no), logit(yes)])[yes]. Only two rows of the [vocab, hidden] head enter it, and
softmax over two logits is sigmoid(logit(yes) - logit(no)) = sigmoid(h . (W_yes - W_no)). So
the graph ends in the last real token's final-normed hidden state (fp32) times one fp32
vector w = W_yes - W_no, computed here from the checkpoint's lm_head rows (embed_tokens when
the embeddings are tied) in fp32. See docs/design.md, "Reranker".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..manifest import RerankPrompt
from ..texts import BUILTIN_TEXTS
from .families import SPECS, UnsupportedModelError, family_for
from .source import ModelSource, SourceError
from .weights import convert

# The model card's "Transformers Usage", character for character
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
CARD_MAX_LENGTH = 8192  # the card's max_length: the default cap below the family's positions
YES, NO = "yes", "no"
# the int8 check: each query against every non-empty built-in text (multilingual, code, long)
CHECK_QUERIES = (
    "What is the capital of China?",
    "Explain gravity",
    "How do vaccines work?",
    "Which city is the capital of Japan?",
    "what does machine learning do",
    "Q3 revenue growth",
)


def check_pairs() -> list[tuple[str, list[str]]]:
    docs = [t for t in BUILTIN_TEXTS if t.strip()]
    return [(q, docs) for q in CHECK_QUERIES]


def is_reranker_folder(folder: Path, name: str) -> bool:
    """A checkpoint is recognised as a reranker without --task when all hold: its config names
    exactly one architecture, one its family's spec can export as a reranker
    (`FamilySpec.rerank_architectures`: Qwen3ForCausalLM for Qwen3), no sentence-transformers
    modules.json, and the model's name (hub id or folder name) contains "reranker"
    (case-insensitive)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        archs = cfg.get("architectures") if isinstance(cfg, dict) else None
        spec = SPECS[family_for(cfg)] if isinstance(archs, list) and len(archs) == 1 else None
    except (OSError, json.JSONDecodeError, UnsupportedModelError):
        return False
    return (
        spec is not None
        and isinstance(archs, list)
        and archs[0] in spec.rerank_architectures
        and not (folder / "modules.json").is_file()
        and "reranker" in name.lower()
    )


def check_source(src: ModelSource, model: str) -> None:
    """Refuse a checkpoint the reranker head cannot be put on."""
    if not SPECS[src.family].exports_reranker(src.config):
        raise SourceError(
            f"--task rerank supports Qwen3-Reranker checkpoints (Qwen3ForCausalLM); {model!r} is "
            f"{src.config.get('architectures')} ({src.family})"
        )
    if src.folder is not None and (src.folder / "modules.json").is_file():
        raise SourceError(
            f"{model!r} is a sentence-transformers embedding model (modules.json); "
            "it cannot be exported as a reranker"
        )


def head_vector(src: ModelSource, yes: int, no: int) -> np.ndarray:
    """W_yes - W_no in fp32 from lm_head (embed_tokens when the embeddings are tied)."""
    tied = bool(src.config.get("tie_word_embeddings", True))
    keys = set(src.weights.keys())
    name = "embed_tokens.weight" if tied or "lm_head.weight" not in keys else "lm_head.weight"
    if not tied and name != "lm_head.weight":
        raise SourceError("tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    table = src.weights.load(name)
    if max(yes, no) >= table.shape[0]:
        raise SourceError(f"{name} has {table.shape[0]} rows; the yes/no ids are {yes}/{no}")
    rows = convert(np.ascontiguousarray(table[[yes, no]]), np.dtype(np.float32))
    del table
    return np.ascontiguousarray(rows[0] - rows[1], dtype=np.float32)


def prompt_ids(tokenizer_dir: Path, max_length: int) -> RerankPrompt:
    """The manifest's `rerank` record: the card's prompt, its token ids, the yes/no ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids: dict[str, int] = {}
    for t in (YES, NO):
        i = tok.token_to_id(t)
        if i is None or tok.encode(t, add_special_tokens=False).ids != [i]:
            raise SourceError(f"the tokenizer has no single token {t!r}: not a Qwen3 reranker")
        ids[t] = i
    probe = "Hello world"
    if tok.encode(probe).ids != tok.encode(probe, add_special_tokens=False).ids:
        raise SourceError(
            "the tokenizer appends special tokens (the Qwen3-Embedding tokenizer?); the "
            "reranker prompt needs the reranker's own tokenizer, which appends nothing"
        )
    pad = tok.token_to_id("<|endoftext|>")
    prefix = tok.encode(PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(SUFFIX, add_special_tokens=False).ids
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"--max-length {max_length} leaves no room for the document")
    return RerankPrompt(
        prefix=PREFIX,
        suffix=SUFFIX,
        template=TEMPLATE,
        default_instruction=DEFAULT_INSTRUCTION,
        prefix_ids=prefix,
        suffix_ids=suffix,
        yes_token=YES,
        no_token=NO,
        yes_id=ids[YES],
        no_id=ids[NO],
        pad_id=0 if pad is None else pad,
        recipe="Qwen3-Reranker model card, Transformers usage",
        max_body_tokens=body,
    )
