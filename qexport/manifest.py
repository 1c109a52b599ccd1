"""The artifact manifest `qexport.json`: the one contract between export and runtime.

Written by `qexport.export.artifact`, read by `qexport.runtime.artifact`. Plain dataclasses
and json only, so the runtime can import it without torch or onnx.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST_NAME = "qexport.json"
GRAPH_NAME = "model.onnx"
EXTERNAL_DATA_NAME = "model.onnx_data"

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "int8-dynamic")
POOLINGS = ("lasttoken", "mean", "cls", "max", "mean_sqrt_len")


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match the files beside it."""


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[str | int]


@dataclass
class Manifest:
    source: dict[str, Any]
    architecture: dict[str, Any]
    pooling: str
    normalize: bool
    embedding_dim: int
    allowed_dims: list[int]
    max_length: int
    precision: str
    opset: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tokenizer: dict[str, Any]
    prompts: dict[str, str] = field(default_factory=dict)
    instruction_template: str | None = None
    default_instruction: str | None = None
    similarity: str = "cosine"
    # "embed" (sentence_embedding output) or "rerank" (score/logit per query-document pair;
    # `rerank` then holds the prompt: prefix/suffix text and ids, body template, default
    # instruction, yes/no token ids). Old manifests have neither and load as "embed".
    task: str = "embed"
    rerank: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    graph_file: str = GRAPH_NAME
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        data = dict(data)
        try:
            data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: str | Path, *, verify: bool = False) -> Manifest:
    """Read `qexport.json` from an artifact folder; with verify, check every file's sha256."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"artifact folder {str(folder)!r} does not exist")
    if not path.is_file():
        raise ManifestError(f"{str(folder)!r} is not a qexport artifact: no {MANIFEST_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: invalid JSON ({exc})") from exc
    manifest = Manifest.from_dict(data)
    for name in manifest.files:
        if not (folder / name).is_file():
            raise ManifestError(f"artifact file {name!r} listed in the manifest is missing")
    if verify:
        for name, digest in manifest.files.items():
            if sha256_file(folder / name) != digest:
                raise ManifestError(f"artifact file {name!r} does not match its sha256")
    return manifest
