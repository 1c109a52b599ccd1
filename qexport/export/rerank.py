"""Qwen3-Reranker export (`qexport onnx MODEL --task rerank`): the Qwen3 backbone, then one
score per pair.

The model card scores a pair by the causal LM's next-token logits at the last position:
softmax([logit(no), logit(yes)])[yes]. Only two rows of the [vocab, hidden] head enter it, and
softmax over two logits is sigmoid(logit(yes) - logit(no)) = sigmoid(h . (W_yes - W_no)). So
the graph ends in the last real token's final-normed hidden state (fp32) times one fp32
vector w = W_yes - W_no, computed here from the checkpoint's lm_head rows (embed_tokens when
the embeddings are tied) in fp32: outputs `logit` [batch] and `score` = sigmoid(logit)
[batch]. No [batch, seq, vocab] tensor exists anywhere. See docs/design.md, "Reranker".
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from ..manifest import Manifest, TensorSpec
from ..util import library_versions
from .api import ARCH_KEYS
from .artifact import check_output, finish_manifest, save_graph, staging
from .families import FAMILIES, SPECS, UnsupportedModelError, family_for
from .graph import OPSET, GraphBuilder
from .heads import LastTokenPooling
from .random_rerank import RERANKERS, write_random_reranker
from .source import ModelSource, SourceError, resolve
from .tokenizer_files import copy_tokenizer
from .weights import convert

if TYPE_CHECKING:
    from .api import ExportOptions

TASKS = ("auto", "embed", "rerank")
RERANK_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The model card's "Transformers Usage", character for character
PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
CARD_MAX_LENGTH = 8192
YES, NO = "yes", "no"


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


def wants_rerank(model: str, task: str | None) -> bool:
    task = task or "auto"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if model.startswith("random:"):
        is_random_reranker = model.split(":", 1)[1] in RERANKERS
        if task == "embed" and is_random_reranker:
            raise ValueError(f"{model} is a reranker; it cannot be exported with --task embed")
        return is_random_reranker or task == "rerank"
    if task != "auto":
        return task == "rerank"
    path = Path(model).expanduser()
    if path.is_dir():
        return is_reranker_folder(path, Path(os.path.abspath(path)).name)
    # a hub id: decided by name here, checked against the config once downloaded
    return "qwen3-reranker" in model.lower()


def _head_vector(src: ModelSource, yes: int, no: int) -> np.ndarray:
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


def prompt_ids(tokenizer_dir: Path) -> dict[str, Any]:
    """The manifest's `rerank` record: the card's prompt, its token ids, the yes/no ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in (YES, NO)}
    for t, i in ids.items():
        if i is None or tok.encode(t, add_special_tokens=False).ids != [i]:
            raise SourceError(f"the tokenizer has no single token {t!r}: not a Qwen3 reranker")
    probe = "Hello world"
    if tok.encode(probe).ids != tok.encode(probe, add_special_tokens=False).ids:
        raise SourceError(
            "the tokenizer appends special tokens (the Qwen3-Embedding tokenizer?); the "
            "reranker prompt needs the reranker's own tokenizer, which appends nothing"
        )
    pad = tok.token_to_id("<|endoftext|>")
    return {
        "prefix": PREFIX,
        "suffix": SUFFIX,
        "template": TEMPLATE,
        "default_instruction": DEFAULT_INSTRUCTION,
        "prefix_ids": tok.encode(PREFIX, add_special_tokens=False).ids,
        "suffix_ids": tok.encode(SUFFIX, add_special_tokens=False).ids,
        "yes_token": YES,
        "no_token": NO,
        "yes_id": ids[YES],
        "no_id": ids[NO],
        "pad_id": 0 if pad is None else pad,
        "recipe": "Qwen3-Reranker model card, Transformers usage",
    }


def build_rerank_model(
    src: ModelSource, compute: str, max_length: int, layers: int | None, rerank: dict[str, Any]
) -> tuple[ir.Model, int]:
    """The backbone in `compute` precision, the score head in fp32; (model, weight bytes)."""
    builder = FAMILIES[src.family](src.config, src.weights, compute, max_length, layers=layers)
    g = GraphBuilder(name=f"qexport_{src.family}_rerank")
    seq = ("batch", "sequence")
    ids = g.input("input_ids", ir.DataType.INT64, seq)
    mask = g.input("attention_mask", ir.DataType.INT64, seq)
    hidden = builder.build(g, ids, mask)  # fp32 [B, S, H], after the final norm
    last = LastTokenPooling()(g, hidden, mask)  # [B, H]
    w = g.const(_head_vector(src, rerank["yes_id"], rerank["no_id"]), "score_weight_yes_minus_no")
    # Mul + ReduceSum rather than MatMul with a [H, 1] weight: quantizers never touch it
    logit = g.op("ReduceSum", g.op("Mul", last, w), g.i64([-1]), keepdims=0)
    score = g.op("Sigmoid", logit)
    g.output(score, "score", ["batch"])
    g.output(logit, "logit", ["batch"])
    return g.build(doc=f"qexport {src.spec} rerank ({compute})"), g.weight_bytes


def _resolve(model: str, opts: ExportOptions, scratch: Path) -> ModelSource:
    if model.startswith("random:"):
        name = model.split(":", 1)[1]
        folder = write_random_reranker(name, scratch / name, tokenizer=opts.tokenizer)
        src = resolve(str(folder))
        src.spec, src.kind, src.seed = model, "random", RERANKERS[name].seed
        return src
    src = resolve(model, tokenizer=opts.tokenizer, revision=opts.revision)
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
    return src


def _max_length(src: ModelSource, requested: int | None) -> int:
    limit = int(src.config.get("max_position_embeddings", CARD_MAX_LENGTH))
    max_length = requested or min(CARD_MAX_LENGTH, limit)
    if max_length > limit:
        raise ValueError(
            f"--max-length {max_length} exceeds the model's max_position_embeddings {limit}"
        )
    return max_length


def export_rerank(model: str, out: str | Path, opts: ExportOptions) -> Manifest:
    from .rerank_quant import RerankQuantizer

    if opts.precision not in RERANK_PRECISIONS:
        raise ValueError(
            f"--task rerank supports precisions {', '.join(RERANK_PRECISIONS)}, "
            f"not {opts.precision!r}"
        )
    if opts.token_embeddings:
        raise ValueError("--token-embeddings is not available with --task rerank")
    out = Path(out)
    check_output(out, opts.overwrite)
    parent = out.absolute().parent
    with tempfile.TemporaryDirectory(prefix=".qexport-rerank-src.", dir=parent) as tmp_src:
        src = _resolve(model, opts, Path(tmp_src))
        assert src.tokenizer_dir is not None
        rerank = prompt_ids(src.tokenizer_dir)
        max_length = _max_length(src, opts.max_length)
        rerank["max_body_tokens"] = (
            max_length - len(rerank["prefix_ids"]) - len(rerank["suffix_ids"])
        )
        if rerank["max_body_tokens"] < 1:
            raise ValueError(f"--max-length {max_length} leaves no room for the document")
        quant = RerankQuantizer.for_options(opts) if opts.precision == "int8" else None
        compute = quant.base if quant is not None else opts.precision
        with staging(out, opts.overwrite) as tmp:
            graph, weight_bytes = build_rerank_model(src, compute, max_length, opts.layers, rerank)
            if quant is not None:
                weight_bytes = quant.quantize(graph, src.tokenizer_dir, rerank, max_length, tmp)
            save_graph(graph, tmp, weight_bytes, progress=opts.progress)
            if quant is not None:
                quant.check(tmp)
            copy_tokenizer(src.tokenizer_dir, tmp)
            manifest = _manifest(src, opts, graph, max_length, rerank)
            manifest.quantization = quant.info if quant is not None else None
            finish_manifest(manifest, tmp)
    return manifest


def _manifest(
    src: ModelSource, opts: ExportOptions, graph: ir.Model, max_length: int, rerank: dict[str, Any]
) -> Manifest:
    arch: dict[str, Any] = {"family": src.family, "model_type": src.config.get("model_type")}
    for key in (
        "architectures",
        *ARCH_KEYS,
        "tie_word_embeddings",
    ):
        if key in src.config:
            arch[key] = src.config[key]
    if opts.layers is not None:
        arch["layers_exported"] = opts.layers
    outputs = [TensorSpec(v.name or "", "float32", ["batch"]) for v in graph.graph.outputs]
    inputs = [TensorSpec(v.name or "", "int64", ["batch", "sequence"]) for v in graph.graph.inputs]
    return Manifest(
        source={"model": src.spec, "kind": src.kind, "revision": src.revision, "seed": src.seed},
        architecture=arch,
        pooling="lasttoken",
        normalize=False,
        embedding_dim=1,
        allowed_dims=[1],
        max_length=max_length,
        precision=opts.precision,
        opset={"": OPSET, "com.microsoft": 1},
        inputs=inputs,
        outputs=outputs,
        tokenizer={"file": "tokenizer.json", "padding_side": "right"},
        similarity="none",
        task="rerank",
        rerank=rerank,
        versions=library_versions(),
        timings_s=dict(opts.timings),
    )
