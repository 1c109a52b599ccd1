"""`export_onnx`: MODEL -> artifact folder. The one entry point the CLI calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from ..manifest import PRECISIONS, Manifest, TensorSpec
from ..runtime.tokenize import TextEncoder
from ..util import library_versions
from .artifact import check_output, finish_manifest, save_graph, staging
from .families import FAMILIES, SPECS
from .graph import OPSET, GraphBuilder
from .heads import pool_and_normalize
from .quantize import (
    QUANT_PRECISIONS,
    Quantized,
    QuantOptions,
    base_precision,
    quantize_model,
    verify_quantized,
)
from .source import ModelSource, resolve
from .st_dense import check_chain
from .tokenizer_files import build_byte_tokenizer, copy_tokenizer

log = logging.getLogger("qexport")

FLOAT_PRECISIONS = ("fp32", "fp16", "bf16")
# the config entries a manifest's `architecture` records (when the config has them)
ARCH_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
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
    # rerank (export/rerank.py): None/"auto" detects a Qwen3 reranker, "embed", "rerank"
    task: str | None = None
    max_logodds_diff: float | None = None  # rerank int8 check bar (rerank_quant.py)


@contextmanager
def _step(opts: ExportOptions, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    took = time.perf_counter() - start
    opts.timings[name] = round(took, 3)
    if opts.progress:
        log.info("%-14s %6.1f s", name, took)


def build_model(
    src: ModelSource, opts: ExportOptions, max_length: int
) -> tuple[ir.Model, int, int]:
    """Emit the graph for a resolved source; returns (model, weight bytes, embedding size)."""
    builder_cls = FAMILIES[src.family]
    compute = (
        opts.precision
        if opts.precision in FLOAT_PRECISIONS
        else base_precision(opts.precision, opts.device)
    )
    builder = builder_cls(src.config, src.weights, compute, max_length, layers=opts.layers)
    g = GraphBuilder(name=f"qexport_{src.family}")
    seq = ("batch", "sequence")
    inputs = {name: g.input(name, ir.DataType.INT64, seq) for name in builder.input_names}
    hidden = builder.build(g, *inputs.values())
    mask = inputs["attention_mask"]
    head = src.head
    dim = check_chain(head.dense, builder.hidden_size)  # Dense layers change the width
    emb = pool_and_normalize(g, hidden, mask, head.pooling, head.normalize, head.dense)
    g.output(emb, "sentence_embedding", ["batch", dim])
    if opts.token_embeddings:
        m = g.op("Unsqueeze", g.cast(mask, ir.DataType.FLOAT), g.i64([-1]))
        g.output(
            g.op("Mul", hidden, m), "token_embeddings", ["batch", "sequence", builder.hidden_size]
        )
    return (
        g.build(doc=f"qexport {src.spec} ({opts.precision})"),
        g.weight_bytes,
        dim,
    )


def export_onnx(model: str, out: str | Path, opts: ExportOptions | None = None) -> Manifest:
    opts = opts or ExportOptions()
    from .rerank import export_rerank, wants_rerank

    if wants_rerank(model, opts.task):
        return export_rerank(model, out, opts)
    if opts.precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {opts.precision!r}; choose from {', '.join(PRECISIONS)}"
        )
    if opts.precision in QUANT_PRECISIONS:
        base_precision(opts.precision, opts.device)  # fail fast on int8-dynamic + cuda
    out = Path(out)
    check_output(out, opts.overwrite)
    with _step(opts, "resolve"):
        src = resolve(model, tokenizer=opts.tokenizer, revision=opts.revision)
    positions = SPECS[src.family].max_positions(src.config)  # the family's rule
    model_max = positions
    if src.head.max_seq_length:
        model_max = min(model_max, int(src.head.max_seq_length))
    max_length = model_max if opts.max_length is None else opts.max_length
    if max_length < 2:
        raise ValueError(f"--max-length must be at least 2, got {max_length}")
    if max_length > positions:
        raise ValueError(
            f"--max-length {max_length} exceeds the {positions} positions the model has "
            f"(max_position_embeddings {src.config.get('max_position_embeddings')})"
        )
    with staging(out, opts.overwrite) as tmp:
        with _step(opts, "build graph"):
            graph, weight_bytes, hidden = build_model(src, opts, max_length)
        with _step(opts, "tokenizer"):
            quantize = opts.precision in QUANT_PRECISIONS
            encoder = write_tokenizer(src, tmp, max_length, encoder=quantize)
        quant: Quantized | None = None
        if encoder is not None:
            with _step(opts, "quantize"):
                quant = quantize_model(
                    graph, opts.precision, encoder, tmp, device=opts.device, options=opts.quant
                )
            weight_bytes = quant.weight_bytes
        with _step(opts, "write weights"):
            save_graph(graph, tmp, weight_bytes, progress=opts.progress)
        if quant is not None:
            with _step(opts, "check"):
                verify_quantized(tmp, quant)
        manifest = _manifest(src, opts, graph, hidden, max_length)
        manifest.quantization = quant.info if quant is not None else None
        finish_manifest(manifest, tmp)
    return manifest


def write_tokenizer(
    src: ModelSource, folder: Path, max_length: int, *, encoder: bool
) -> TextEncoder | None:
    """Write the artifact's tokenizer into `folder`; with `encoder`, also return the encoder
    that quantization calibrates and checks with. That encoder is loaded before the family's
    tokenizer patch (XLM-R's whitespace split), as quantized exports have always been
    calibrated: after it, two built-in texts tokenise differently and XLM-R's GPTQ /
    SmoothQuant weights change."""
    if src.tokenizer_dir is None:
        build_byte_tokenizer(folder, max_length)
    else:
        copy_tokenizer(src.tokenizer_dir, folder)
    enc = TextEncoder(folder, max_length, src.head.instruction_template) if encoder else None
    if src.tokenizer_dir is not None:
        SPECS[src.family].patch_tokenizer(folder / "tokenizer.json")
    return enc


def _manifest(
    src: ModelSource, opts: ExportOptions, graph: ir.Model, hidden: int, max_length: int
) -> Manifest:
    arch = {"family": src.family, "model_type": src.config.get("model_type")}
    for key in ARCH_KEYS:
        if key in src.config:
            arch[key] = src.config[key]
    if opts.layers is not None:
        arch["layers_exported"] = opts.layers
    dims = SPECS[src.family].allowed_dims(hidden)

    def spec(v: ir.Value) -> TensorSpec:
        dtype = {ir.DataType.INT64: "int64", ir.DataType.FLOAT: "float32"}[v.dtype]  # type: ignore[index]
        return TensorSpec(
            v.name or "", dtype, [d if isinstance(d, int) else str(d) for d in v.shape or []]
        )

    return Manifest(
        source={"model": src.spec, "kind": src.kind, "revision": src.revision, "seed": src.seed},
        architecture=arch,
        pooling=src.head.pooling,
        normalize=src.head.normalize,
        embedding_dim=hidden,
        allowed_dims=dims,
        max_length=max_length,
        precision=opts.precision,
        opset={"": OPSET, "com.microsoft": 1},
        inputs=[spec(v) for v in graph.graph.inputs],
        outputs=[spec(v) for v in graph.graph.outputs],
        tokenizer={"file": "tokenizer.json", "padding_side": "right"},
        prompts=dict(src.head.prompts),
        instruction_template=src.head.instruction_template,
        default_instruction=src.head.default_instruction,
        similarity=src.head.similarity,
        versions=library_versions(),
        timings_s=dict(opts.timings),
    )
