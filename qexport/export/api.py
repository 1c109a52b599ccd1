"""`export_onnx`: MODEL -> artifact folder. The one entry point the CLI calls."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx_ir as ir

from ..manifest import PRECISIONS, Embedding, Manifest, RerankPrompt, TensorSpec
from ..runtime.reranker import PairEncoder
from ..runtime.tokenize import TextEncoder
from ..tasks import EMBED, RERANK, TASK_NAMES, Task, get_task
from ..util import library_versions
from . import random as random_models
from . import rerank
from .artifact import finish_manifest, save_graph, staging
from .families import FAMILIES, SPECS
from .graph import OPSET, GraphBuilder
from .heads import HEADS, HeadInput
from .quantize import (
    QUANT_PRECISIONS,
    Quantized,
    QuantOptions,
    base_precision,
    quantize_model,
    verify_quantized,
)
from .quantize.calibration import Rows, load_texts
from .quantize.options import make_plan
from .source import ModelSource, resolve
from .tokenizer_files import build_byte_tokenizer, copy_tokenizer

log = logging.getLogger("qexport")

FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")
TASK_OPTIONS = ("auto", *TASK_NAMES)  # --task: a task, or "auto" (detected from MODEL)
SOURCE_DIR = ".source"  # a random checkpoint folder, inside the staging folder
# the config entries a manifest's `architecture` records (when the config has them)
ARCH_KEYS = (
    "architectures",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)


@dataclass
class ExportOptions:
    precision: str = "fp32"
    max_length: int | None = None
    token_embeddings: bool = False
    tokenizer: str | Path | None = None
    revision: str | None = None
    overwrite: bool = False
    layers: int | None = None  # truncate the decoder (tests and layer-wise checks)
    device: str = "cpu"  # quantized precisions: the float base (cpu: fp32, cuda: fp16)
    quant: QuantOptions = field(default_factory=QuantOptions)
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    task: str | None = None  # a task name, or None / "auto": detected (`task_for`)


@contextmanager
def _step(opts: ExportOptions, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    took = time.perf_counter() - start
    opts.timings[name] = round(took, 3)
    if opts.progress:
        log.info("%-14s %6.1f s", name, took)


def task_for(model: str, option: str | None) -> Task:
    """The task MODEL is exported for: a random model's own; else `option` unless "auto"; else
    a reranker checkpoint (`rerank.is_reranker_folder`; a hub id by its name) or embed."""
    option = option or "auto"
    if option not in TASK_OPTIONS:
        raise ValueError(f"unknown task {option!r}; choose from {', '.join(TASK_OPTIONS)}")
    if model.startswith("random:") and model.split(":", 1)[1] in random_models.REGISTRY:
        own = random_models.lookup(model).task
        if option not in ("auto", own):
            raise ValueError(f"{model} is {get_task(own).noun} model; it cannot be exported "
                             f"with --task {option}")  # fmt: skip
        return get_task(own)
    if option != "auto":
        return get_task(option)
    path = Path(model).expanduser()
    if path.is_dir():
        found = rerank.is_reranker_folder(path, Path(os.path.abspath(path)).name)
    else:  # a hub id: decided by name here, checked against the config once downloaded
        found = "qwen3-reranker" in model.lower()
    return RERANK if found else EMBED


def check_options(task: Task, opts: ExportOptions) -> None:
    if opts.precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {opts.precision!r}; choose from {', '.join(PRECISIONS)}"
        )
    if opts.precision not in task.precisions:
        raise ValueError(f"--task {task.name} supports precisions {', '.join(task.precisions)}, "
                         f"not {opts.precision!r}")  # fmt: skip
    if opts.token_embeddings and task.row_shape != "dim":
        raise ValueError(f"--token-embeddings is not available with --task {task.name}")
    if opts.precision in QUANT_PRECISIONS:  # fail fast: int8-dynamic + cuda, bad options
        make_plan(opts.precision, opts.device, opts.quant, task)


def build_model(
    src: ModelSource,
    opts: ExportOptions,
    max_length: int,
    task: Task = EMBED,
    prompt: RerankPrompt | None = None,
) -> tuple[ir.Model, int, int]:
    """Emit the graph for a resolved source with the task's head (`heads.HEADS`); returns
    (model, weight bytes, row width: the embedding size, or 1)."""
    head = HEADS[task.name]
    compute = (
        opts.precision
        if opts.precision in FLOAT_PRECISIONS
        else base_precision(opts.precision, opts.device)
    )
    builder = FAMILIES[src.family](src.config, src.weights, compute, max_length, layers=opts.layers)
    g = GraphBuilder(name=f"qexport_{src.family}{head.graph_suffix}")
    seq = ("batch", "sequence")
    inputs = {name: g.input(name, ir.DataType.INT64, seq) for name in builder.input_names}
    hidden = builder.build(g, *inputs.values())
    x = HeadInput(src, hidden, inputs["attention_mask"], builder.hidden_size,
                  opts.token_embeddings, prompt)  # fmt: skip
    width = head.build(g, x)
    precision = opts.precision if head.doc_precision == "export" else compute
    return g.build(doc=f"qexport {src.spec}{head.doc_label} ({precision})"), g.weight_bytes, width


def export_onnx(model: str, out: str | Path, opts: ExportOptions | None = None) -> Manifest:
    """The one pipeline, for every task: resolve, build the graph with the task's head,
    tokenizer, quantize against the task's metric, save, verify, manifest."""
    opts = opts or ExportOptions()
    task = task_for(model, opts.task)
    check_options(task, opts)
    with staging(out, opts.overwrite) as tmp:
        with _step(opts, "resolve"):
            src = resolve(model, tokenizer=opts.tokenizer, revision=opts.revision,
                          scratch=tmp / SOURCE_DIR)  # fmt: skip
            if task is RERANK:
                rerank.check_source(src, model)
        max_length = _max_length(src, task, opts.max_length)
        prompt = None
        if task is RERANK:
            assert src.tokenizer_dir is not None
            prompt = rerank.prompt_ids(src.tokenizer_dir, max_length)
        with _step(opts, "build graph"):
            graph, weight_bytes, width = build_model(src, opts, max_length, task, prompt)
        with _step(opts, "tokenizer"):
            quantize = opts.precision in QUANT_PRECISIONS
            rows = write_tokenizer(src, tmp, max_length, quantize, opts.quant, prompt)
        quant: Quantized | None = None
        if rows is not None:
            with _step(opts, "quantize"):
                quant = quantize_model(graph, opts.precision, rows, tmp, task=task,
                                       source=_rows_source(opts.quant), device=opts.device,
                                       options=_family_quant(src, opts.quant))  # fmt: skip
            weight_bytes = quant.weight_bytes
        with _step(opts, "write weights"):
            save_graph(graph, tmp, weight_bytes, progress=opts.progress)
        shutil.rmtree(tmp / SOURCE_DIR, ignore_errors=True)
        if quant is not None:
            with _step(opts, "check"):
                verify_quantized(tmp, quant)
        manifest = _manifest(src, opts, graph, task, width, max_length, prompt)
        manifest.quantization = quant.info if quant is not None else None
        finish_manifest(manifest, tmp)
    return manifest


def _family_quant(src: ModelSource, q: QuantOptions) -> QuantOptions:
    """The options with the family's defaults where they name none (FamilySpec)."""
    if q.per_token is None:
        q = replace(q, per_token=SPECS[src.family].int8_dynamic_per_token)
    return q


def _max_length(src: ModelSource, task: Task, requested: int | None) -> int:
    """The family's rule (`FamilySpec.max_positions`), capped by default at the model's own
    limit: sentence-transformers' max_seq_length (embed), the card's 8192 (rerank)."""
    positions = SPECS[src.family].max_positions(src.config)
    cap = rerank.CARD_MAX_LENGTH if task is RERANK else src.head.max_seq_length
    model_max = positions if not cap else min(positions, int(cap))
    max_length = model_max if requested is None else requested
    if max_length < 2:
        raise ValueError(f"--max-length must be at least 2, got {max_length}")
    if max_length > positions:
        raise ValueError(
            f"--max-length {max_length} exceeds the {positions} positions the model has "
            f"(max_position_embeddings {src.config.get('max_position_embeddings')})"
        )
    return max_length


def _rows_source(q: QuantOptions) -> str:
    return "builtin" if q.calibration is None else Path(q.calibration).name


def write_tokenizer(
    src: ModelSource,
    folder: Path,
    max_length: int,
    rows: bool = False,
    quant: QuantOptions | None = None,
    prompt: RerankPrompt | None = None,
) -> Rows | None:
    """Write the artifact's tokenizer into `folder`; with `rows`, also return the token rows
    quantization calibrates and checks with: the calibration texts (embed) or the check pairs
    with the manifest's prompt (rerank). The text encoder is loaded before the family's
    tokenizer patch (XLM-R's whitespace split), as quantized exports have always been
    calibrated: after it, two built-in texts tokenise differently and XLM-R's GPTQ /
    SmoothQuant weights change."""
    if src.tokenizer_dir is None:
        build_byte_tokenizer(folder, max_length)
    else:
        copy_tokenizer(src.tokenizer_dir, folder)
    out = None
    if rows and prompt is not None:
        pairs = PairEncoder(folder, prompt, max_length)
        out = Rows([], pad_id=prompt.pad_id)
        for query, docs in rerank.check_pairs():
            ids = pairs.pairs(query, docs).ids
            out.ids.extend(ids)
            out.groups.append(len(ids))
    elif rows:
        encoder = TextEncoder(folder, max_length, src.head.instruction_template)
        out = Rows.from_texts(encoder, load_texts((quant or QuantOptions()).calibration))
    if src.tokenizer_dir is not None:
        SPECS[src.family].patch_tokenizer(folder / "tokenizer.json")
    return out


def _manifest(
    src: ModelSource,
    opts: ExportOptions,
    graph: ir.Model,
    task: Task,
    width: int,
    max_length: int,
    prompt: RerankPrompt | None,
) -> Manifest:
    arch = {"family": src.family, "model_type": src.config.get("model_type")}
    for key in ARCH_KEYS:
        if key in src.config:
            arch[key] = src.config[key]
    if opts.layers is not None:
        arch["layers_exported"] = opts.layers

    def spec(v: ir.Value) -> TensorSpec:
        dtype = {ir.DataType.INT64: "int64", ir.DataType.FLOAT: "float32"}[v.dtype]  # type: ignore[index]
        return TensorSpec(
            v.name or "", dtype, [d if isinstance(d, int) else str(d) for d in v.shape or []]
        )

    embedding = None
    if task is EMBED:
        h = src.head
        embedding = Embedding(
            pooling=h.pooling,
            normalize=h.normalize,
            embedding_dim=width,
            allowed_dims=SPECS[src.family].allowed_dims(width),
            prompts=dict(h.prompts),
            instruction_template=h.instruction_template,
            default_instruction=h.default_instruction,
            similarity=h.similarity,
        )
    return Manifest(
        source={"model": src.spec, "kind": src.kind, "revision": src.revision, "seed": src.seed},
        architecture=arch,
        max_length=max_length,
        precision=opts.precision,
        opset={"": OPSET, "com.microsoft": 1},
        inputs=[spec(v) for v in graph.graph.inputs],
        outputs=[spec(v) for v in graph.graph.outputs],
        tokenizer={"file": "tokenizer.json", "padding_side": "right"},
        task=task.name,
        embedding=embedding,
        rerank=prompt,
        versions=library_versions(),
        timings_s=dict(opts.timings),
    )
