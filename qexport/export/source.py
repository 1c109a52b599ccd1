"""Resolve MODEL (a hub id, a local checkpoint folder, or `random:<name>`) into config,
weights, tokenizer and the sentence-transformers head description."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import random as random_models
from . import st_modules
from .families import SPECS, UnsupportedModelError, family_for
from .st_dense import DenseLayer
from .weights import SafetensorsSource, WeightSource


class SourceError(ValueError):
    """MODEL cannot be resolved or read."""


@dataclass
class Head:
    """What sentence-transformers does after the transformer: pooling, normalise, prompts."""

    pooling: str
    normalize: bool
    prompts: dict[str, str] = field(default_factory=dict)
    similarity: str = "cosine"
    max_seq_length: int | None = None
    instruction_template: str | None = None
    default_instruction: str | None = None
    dense: list[DenseLayer] = field(default_factory=list)  # after pooling, before Normalize


@dataclass
class ModelSource:
    spec: str
    kind: str  # random | folder | hub
    config: dict[str, Any]
    weights: WeightSource
    family: str
    head: Head
    tokenizer_dir: Path | None  # None: build the byte-level tokenizer
    revision: str | None = None
    folder: Path | None = None
    seed: int | None = None
    keepalive: Any = None  # e.g. the temporary folder a random checkpoint was written to


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def read_st_head(folder: Path, family: str, tokenizer_dir: Path | None = None) -> Head:
    """The sentence-transformers files of any version (st_modules: modules.json and each
    module's config, config_sentence_transformers.json, sentence_bert_config.json or the
    tokenizer's length); without modules.json, the family's documented default."""
    if (folder / "modules.json").is_file():
        mods = st_modules.read_modules(folder)
        head: Head | None = Head(pooling=mods.pooling, normalize=mods.normalize, dense=mods.dense)
    else:
        head = _family_head(family)
    if head is None:
        raise UnsupportedModelError(
            f"{folder} has no sentence-transformers modules.json, so its pooling is unknown"
        )
    st_cfg = st_modules.read_st_config(folder)
    head.prompts, head.similarity = st_cfg.prompts, st_cfg.similarity
    head.max_seq_length = st_modules.read_max_seq_length(folder, tokenizer_dir)
    _family_prompts(head, family)
    return head


def _family_head(family: str) -> Head | None:
    """The family's documented head for a checkpoint without modules.json; None: it has none."""
    default = SPECS[family].default_head
    return None if default is None else Head(pooling=default[0], normalize=default[1])


def _family_prompts(head: Head, family: str) -> None:
    spec = SPECS[family]
    if spec.instruction_template is not None:
        head.instruction_template = spec.instruction_template
    if spec.default_instruction is not None:
        head.default_instruction = spec.default_instruction
    for name, prompt in spec.default_prompts.items():
        head.prompts.setdefault(name, prompt)
    if spec.instruction_prompt is not None and spec.instruction_prompt in head.prompts:
        head.default_instruction = head.prompts[spec.instruction_prompt]


def resolve(
    spec: str,
    *,
    tokenizer: str | Path | None = None,
    revision: str | None = None,
    scratch: Path | None = None,
) -> ModelSource:
    """`scratch`: where a random model written as a checkpoint folder goes (the export's
    staging folder, so that a killed run leaves nothing the next one does not remove); None:
    a temporary folder that lives as long as the returned source."""
    if spec.startswith("random:"):
        return _resolve_random(spec, tokenizer, scratch)
    path = Path(spec).expanduser()
    looks_like_path = path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_like_path:
        if not path.is_dir():
            raise SourceError(f"model folder {spec!r} does not exist")
        return _resolve_folder(spec, path, "folder", revision=None, tokenizer=tokenizer)
    return _resolve_hub(spec, revision, tokenizer)


def _resolve_random(spec: str, tokenizer: str | Path | None, scratch: Path | None) -> ModelSource:
    try:
        model = random_models.lookup(spec)
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    if model.layout == "hub":
        return _resolve_random_folder(spec, model, tokenizer, scratch)
    tok_dir = None
    if tokenizer is not None:
        tok_dir = Path(tokenizer).expanduser()
        if not (tok_dir / "tokenizer.json").is_file():
            raise SourceError(f"tokenizer folder {str(tokenizer)!r} has no tokenizer.json")
    family = family_for(model.config)
    head = _family_head(family)
    assert head is not None, f"{family} has no default head for a random model"
    _family_prompts(head, family)
    return ModelSource(
        spec=spec,
        kind="random",
        config=dict(model.config),
        weights=random_models.random_weights(model),
        family=family,
        head=head,
        tokenizer_dir=tok_dir,
        seed=model.seed,
    )


def _resolve_random_folder(
    spec: str, model: random_models.RandomModel, tokenizer: str | Path | None, scratch: Path | None
) -> ModelSource:
    """A random checkpoint in the hub's layout, written to `scratch` or a temporary folder
    that lives as long as the returned source (its weights are memory-mapped from there).
    A reranker's `tokenizer` is the one its checkpoint is written with."""
    keepalive = None
    if scratch is None:
        keepalive = tempfile.TemporaryDirectory(prefix="qexport-random-")
        scratch = Path(keepalive.name)
    rerank = model.task == "rerank"
    try:
        folder = random_models.write_checkpoint(
            model.name, scratch / model.name, tokenizer=tokenizer if rerank else None
        )
    except ValueError as exc:
        raise SourceError(str(exc)) from None
    src = _resolve_folder(spec, folder, "random", None, None if rerank else tokenizer)
    src.seed = model.seed
    src.keepalive = keepalive
    return src


def _resolve_folder(
    spec: str, path: Path, kind: str, revision: str | None, tokenizer: str | Path | None
) -> ModelSource:
    model_dir = st_modules.transformer_dir(path)  # sentence-transformers 1.x: 0_Transformer/
    if not (model_dir / "config.json").is_file():
        raise SourceError(f"model folder {spec!r} has no config.json")
    config = _read_json(model_dir / "config.json")
    family = family_for(config)
    try:
        weights = SafetensorsSource(model_dir, strip_prefixes=SPECS[family].strip_prefixes)
    except FileNotFoundError as exc:
        raise SourceError(f"model folder {spec!r} has no *.safetensors weights") from exc
    tok_dir = Path(tokenizer).expanduser() if tokenizer else model_dir
    if not (tok_dir / "tokenizer.json").is_file():
        raise SourceError(f"{str(tok_dir)!r} has no tokenizer.json")
    return ModelSource(
        spec=spec,
        kind=kind,
        config=config,
        weights=weights,
        family=family,
        head=read_st_head(path, family, tok_dir),
        tokenizer_dir=tok_dir,
        revision=revision,
        folder=path,
    )


def _resolve_hub(spec: str, revision: str | None, tokenizer: str | Path | None) -> ModelSource:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                repo_id=spec,
                revision=revision,
                allow_patterns=[
                    "*.json",
                    "*.safetensors",
                    "*.txt",
                    "*.model",
                    "1_Pooling/*",
                    "*Dense*/pytorch_model.bin",  # a 2.x Dense's weights
                ],
            )
        )
    except Exception as exc:  # network, auth, not found: one line for the user
        raise SourceError(
            f"cannot fetch {spec!r} from the Hugging Face Hub: {type(exc).__name__}: {exc}"
        ) from exc
    # snapshot folders are named by their commit hash
    return _resolve_folder(spec, folder, "hub", revision=folder.name, tokenizer=tokenizer)
