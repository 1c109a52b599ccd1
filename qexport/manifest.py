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

# 2: each task writes its own record and nothing of the other's (a rerank manifest has no
# embedding fields; an embed manifest no `rerank`); the rerank prompt is typed. Version 1
# manifests (qexport before 2: a rerank one filled the embedding fields with placeholders)
# still load: see `_from_v1`.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
class Embedding:
    """Task `embed`: how the graph's vector was made and what a caller may ask of it. Written
    flat into qexport.json (`pooling`, `embedding_dim`, ... at the top level, as always)."""

    pooling: str
    normalize: bool
    embedding_dim: int
    allowed_dims: list[int]  # Matryoshka sizes, embedding_dim included
    prompts: dict[str, str] = field(default_factory=dict)
    instruction_template: str | None = None
    default_instruction: str | None = None
    similarity: str = "cosine"


@dataclass
class RerankPrompt:
    """Task `rerank`: the prompt around each pair (`prefix_ids + body + suffix_ids`, body =
    `template.format(instruction=, query=, doc=)` cut to `max_body_tokens`), and the two
    answer tokens whose logits the graph's score compares. Written as `rerank` in qexport.json."""

    prefix: str
    suffix: str
    template: str
    default_instruction: str
    prefix_ids: list[int]
    suffix_ids: list[int]
    yes_token: str
    no_token: str
    yes_id: int
    no_id: int
    pad_id: int
    recipe: str
    max_body_tokens: int


EMBEDDING_FIELDS = tuple(f.name for f in fields(Embedding))
RERANK_FIELDS = tuple(f.name for f in fields(RerankPrompt))


@dataclass
class Manifest:
    source: dict[str, Any]
    architecture: dict[str, Any]
    max_length: int
    precision: str
    opset: dict[str, int]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tokenizer: dict[str, Any]
    task: str = "embed"  # qexport.tasks.TASK_NAMES
    embedding: Embedding | None = None  # task embed
    rerank: RerankPrompt | None = None  # task rerank
    quantization: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    graph_file: str = GRAPH_NAME
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the embedding record flat at the top level, the rerank record as
        `rerank`, and only the task's own record."""
        data = asdict(self)
        embedding, rerank = data.pop("embedding"), data.pop("rerank")
        tail = {k: data.pop(k) for k in ("quantization", "versions", "timings_s", "files",
                                         "graph_file", "schema_version")}  # fmt: skip
        if embedding is not None:
            data.update(embedding)
        if rerank is not None:
            data["rerank"] = rerank
        return {**data, **tail}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def tokenizer_file(self) -> str:
        return str(self.tokenizer["file"])

    @property
    def embed(self) -> Embedding:
        """The embedding record; ManifestError for another task's manifest."""
        if self.embedding is None:
            raise ManifestError(f"a {self.task} manifest has no embedding fields")
        return self.embedding

    # the embedding fields, read as they were before they had a record of their own
    @property
    def pooling(self) -> str:
        return self.embed.pooling

    @property
    def normalize(self) -> bool:
        return self.embed.normalize

    @property
    def embedding_dim(self) -> int:
        return self.embed.embedding_dim

    @property
    def allowed_dims(self) -> list[int]:
        return self.embed.allowed_dims

    @property
    def prompts(self) -> dict[str, str]:
        return self.embed.prompts

    @property
    def instruction_template(self) -> str | None:
        return self.embed.instruction_template

    @property
    def default_instruction(self) -> str | None:
        return self.embed.default_instruction

    @property
    def similarity(self) -> str:
        return self.embed.similarity

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build from parsed JSON; every field is type- and range-checked (ManifestError)."""
        if not isinstance(data, dict):
            raise ManifestError(f"manifest: must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ManifestError(
                f"manifest schema_version {version!r} is not supported (this qexport reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}); re-export the artifact"
            )
        data = _from_v1(data) if version == 1 else dict(data)
        task = data.get("task", "embed")
        record = () if task == "rerank" else EMBEDDING_FIELDS
        common = [f.name for f in fields(cls) if f.name not in ("embedding", "rerank")]
        known = [*common, *record, *(["rerank"] if task == "rerank" else [])]
        required = [
            f.name
            for f in (*fields(cls), *(fields(Embedding) if task != "rerank" else ()))
            if f.default is MISSING and f.default_factory is MISSING
        ]
        if task == "rerank":
            required.append("rerank")
        check_fields(data, known, required, {"pooling": POOLINGS, "precision": PRECISIONS})
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        if task == "rerank":
            data["rerank"] = RerankPrompt(**data["rerank"])
        else:
            data["embedding"] = Embedding(**{k: data.pop(k) for k in EMBEDDING_FIELDS if k in data})
        return cls(**data)


# what qexport 0.x (schema 1) wrote into a rerank manifest's embedding fields
V1_RERANK_PLACEHOLDERS = {"pooling": "lasttoken", "normalize": False, "embedding_dim": 1,
                          "allowed_dims": [1], "similarity": "none", "prompts": {},
                          "instruction_template": None, "default_instruction": None}  # fmt: skip


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 manifest as schema 2: an embed one loses its `rerank: null`; a rerank one
    its placeholder embedding fields (anything else there is refused)."""
    data = dict(data, schema_version=SCHEMA_VERSION)
    if data.get("task", "embed") != "rerank":
        if data.get("rerank") is not None:
            raise ManifestError("manifest: an embed manifest with a rerank prompt; re-export it")
        data.pop("rerank", None)
        return data
    for key, placeholder in V1_RERANK_PLACEHOLDERS.items():
        if key in data and data.pop(key) != placeholder:
            raise ManifestError(
                f"manifest: a schema 1 rerank manifest with {key} set; re-export the artifact"
            )
    return data


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
