"""The artifact manifest `qexport.json`: the one contract between export and runtime.

Written by `qexport.export.artifact`, read by the runtime (`qexport.runtime.embedder`,
`qexport.runtime.reranker`), the validator and the corpus engines. Plain dataclasses and json
only, so the runtime can import it without torch or onnx.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .manifest_checks import (
    MANIFEST_BYTES_LIMIT,
    ManifestError,
    check_fields,
    check_no_escaping_links,
    inside,
)
from .util import sha256_file as sha256_file  # re-exported: callers import it from here too

SCHEMA_VERSION = 1
MANIFEST_NAME = "qexport.json"
GRAPH_NAME = "model.onnx"
EXTERNAL_DATA_NAME = "model.onnx_data"

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "int8-dynamic")
POOLINGS = ("lasttoken", "mean", "cls", "max", "mean_sqrt_len")


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

    @property
    def tokenizer_file(self) -> str:
        return str(self.tokenizer["file"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build from parsed JSON; every field is type- and range-checked (ManifestError)."""
        if not isinstance(data, dict):
            raise ManifestError(f"manifest: must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ManifestError(
                f"manifest schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        known = [f.name for f in fields(cls)]
        required = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        ]
        check_fields(data, known, required, {"pooling": POOLINGS, "precision": PRECISIONS})
        data = dict(data)
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        return cls(**data)


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and check `qexport.json` alone (no look at the other files)."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"artifact folder {str(folder)!r} does not exist")
    if not path.is_file():
        raise ManifestError(f"{str(folder)!r} is not a qexport artifact: no {MANIFEST_NAME}")
    if path.stat().st_size > MANIFEST_BYTES_LIMIT:
        raise ManifestError(f"{path}: larger than {MANIFEST_BYTES_LIMIT >> 20} MiB")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"{path}: invalid JSON ({str(exc)[:200]})") from None
    return Manifest.from_dict(data)


def load_manifest(folder: str | Path, *, verify: bool = False) -> Manifest:
    """Read `qexport.json` from an artifact folder and check that every path it names (graph,
    tokenizer, `files`) resolves inside the folder and exists; with verify, check every
    listed file's sha256 (the graph and the tokenizer must be listed)."""
    manifest = read_manifest(folder)
    root = Path(folder).resolve()
    check_no_escaping_links(root)
    named = {name: "file" for name in manifest.files}
    named[manifest.graph_file] = "graph_file"
    named[manifest.tokenizer_file] = "tokenizer file"
    for name, what in named.items():
        if not inside(root, name, what).is_file():
            raise ManifestError(f"artifact {what} {name!r} named in the manifest is missing")
    if verify:
        for name in (manifest.graph_file, manifest.tokenizer_file):
            if name not in manifest.files:
                raise ManifestError(
                    f"manifest: {name!r} has no sha256 in 'files', so it cannot be verified"
                )
        for name, digest in manifest.files.items():
            if sha256_file(root / name) != digest:
                raise ManifestError(f"artifact file {name!r} does not match its sha256")
    return manifest
