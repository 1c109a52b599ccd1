"""Type, range and path checks for `qexport.json`, so that a hand-edited or hostile manifest
ends in one line naming the field (`ManifestError`), never a traceback or a silent wrong vector.

Plain Python only (the runtime imports it): no torch, no onnx.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .tasks import EMBED, TASK_NAMES, TASKS
from .templates import TemplateError, check_template

# Generous bounds: the largest models we know have 32k-128k positions and 8k-wide embeddings.
MAX_LENGTH_LIMIT = 1 << 20
EMBEDDING_DIM_LIMIT = 1 << 16
MANIFEST_BYTES_LIMIT = 16 << 20
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
REQUIRED_INPUTS = ("input_ids", "attention_mask")
RERANK_STRINGS = ("prefix", "suffix", "template", "default_instruction", "yes_token", "no_token")
RERANK_IDS = ("prefix_ids", "suffix_ids")
RERANK_ID = ("yes_id", "no_id", "pad_id")
TOKEN_ID_LIMIT = 1 << 24
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match the files beside it."""


def _fail(message: str) -> ManifestError:
    return ManifestError(f"manifest: {message}")


def _name(v: Any) -> str:
    return type(v).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(key: str, lo: int, hi: int) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not _is_int(v) or not lo <= v <= hi:
            raise _fail(f"{key} must be an integer in {lo}..{hi}, got {v!r}")

    return check


def _typed(key: str, kind: type | tuple[type, ...], label: str) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, kind) or (kind is str and not v):
            raise _fail(f"{key} must be {label}, got {_name(v)} {v!r}"[:200])

    return check


def _choice(key: str, choices: tuple[str, ...]) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v not in choices:
            raise _fail(f"{key} must be one of {', '.join(choices)}, got {v!r}"[:200])

    return check


def _str_dict(key: str, value_ok: Callable[[Any], bool], label: str) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, dict):
            raise _fail(f"{key} must be an object, got {_name(v)}")
        for k, x in v.items():
            if not value_ok(x):
                raise _fail(f"{key}[{k!r}] must be {label}, got {x!r}"[:200])

    return check


def _template(v: Any) -> None:
    if v is None:
        return
    if not isinstance(v, str) or "{text}" not in v:
        raise _fail(f"instruction_template must contain {{text}}, got {v!r}"[:200])
    try:
        check_template(v, ("instruction", "text"), "instruction_template")
    except TemplateError as exc:
        raise _fail(str(exc)) from None


def _token_id(v: Any) -> bool:
    return _is_int(v) and 0 <= v < TOKEN_ID_LIMIT


def _rerank(v: Any) -> None:
    """The reranker's prompt (task `rerank`): texts, their token ids, the yes/no/pad ids."""
    if not isinstance(v, dict):
        raise _fail(f"rerank must be an object, got {_name(v)}")
    known = (*RERANK_STRINGS, *RERANK_IDS, *RERANK_ID, "recipe", "max_body_tokens")
    unknown = [str(k)[:80] for k in v if k not in known]
    missing = [k for k in known if k not in v]
    if unknown or missing:
        what = f"unknown field rerank.{unknown[0]}" if unknown else f"missing rerank.{missing[0]}"
        raise _fail(f"{what}; re-export the artifact")
    for key in (*RERANK_STRINGS, "recipe"):
        if not isinstance(v[key], str):
            raise _fail(f"rerank.{key} must be a string, got {_name(v[key])}")
    for key in RERANK_IDS:
        ids = v[key]
        if not isinstance(ids, list) or len(ids) > 4096 or not all(map(_token_id, ids)):
            raise _fail(f"rerank.{key} must be a list of token ids, got {str(ids)[:80]}")
    for key in RERANK_ID:
        if not _token_id(v[key]):
            raise _fail(f"rerank.{key} must be a token id, got {str(v[key])[:40]}")
    _int_in("rerank.max_body_tokens", 1, MAX_LENGTH_LIMIT)(v["max_body_tokens"])
    try:
        check_template(v["template"], ("instruction", "query", "doc"), "rerank.template")
    except TemplateError as exc:
        raise _fail(str(exc)) from None


def _tensors(key: str) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not isinstance(v, list) or not v:
            raise _fail(f"{key} must be a non-empty list of tensors")
        names = set()
        for i, t in enumerate(v):
            ok = (
                isinstance(t, dict)
                and set(t) == {"name", "dtype", "shape"}
                and isinstance(t["name"], str)
                and isinstance(t["dtype"], str)
                and isinstance(t["shape"], list)
                and all(isinstance(d, str) or (_is_int(d) and d >= 0) for d in t["shape"])
            )
            if not ok:
                raise _fail(f"{key}[{i}] must be {{name: str, dtype: str, shape: [str|int]}}")
            if t["name"] in names:
                raise _fail(f"{key}[{i}] repeats the name {t['name']!r}")
            names.add(t["name"])

    return check


def _tokenizer(v: Any) -> None:
    if not isinstance(v, dict) or not isinstance(v.get("file"), str) or not v["file"]:
        raise _fail("tokenizer must be an object with a 'file' string")
    if v.get("padding_side", "right") != "right":
        raise _fail(f"tokenizer padding_side {v.get('padding_side')!r} is not supported ('right')")


FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "source": _typed("source", dict, "an object"),
    "architecture": _typed("architecture", dict, "an object"),
    "normalize": _typed("normalize", bool, "true or false"),
    "embedding_dim": _int_in("embedding_dim", 1, EMBEDDING_DIM_LIMIT),
    "max_length": _int_in("max_length", 2, MAX_LENGTH_LIMIT),
    "opset": _str_dict("opset", _is_int, "an integer"),
    "inputs": _tensors("inputs"),
    "outputs": _tensors("outputs"),
    "tokenizer": _tokenizer,
    "prompts": _str_dict("prompts", lambda x: isinstance(x, str), "a string"),
    "instruction_template": _template,
    "default_instruction": _typed("default_instruction", (str, type(None)), "a string or null"),
    "similarity": _choice("similarity", SIMILARITIES),
    "quantization": _typed("quantization", (dict, type(None)), "an object or null"),
    "versions": _str_dict("versions", lambda x: isinstance(x, str), "a string"),
    "timings_s": _str_dict("timings_s", lambda x: isinstance(x, (int, float)), "a number"),
    "files": _str_dict(
        "files", lambda x: isinstance(x, str) and bool(_SHA256.fullmatch(x)), "a sha256 hex digest"
    ),
    "graph_file": _typed("graph_file", str, "a file name"),
    "task": _choice("task", TASK_NAMES),
    "rerank": _rerank,
}


def _dims(data: dict[str, Any]) -> None:
    if "embedding_dim" not in data:  # not an embedding manifest
        return
    dim, dims = data["embedding_dim"], data["allowed_dims"]
    if (
        not isinstance(dims, list)
        or not dims
        or not all(_is_int(d) and 1 <= d <= dim for d in dims)
        or dim not in dims
        or len(set(dims)) != len(dims)
    ):
        raise _fail(
            f"allowed_dims must be distinct integers in 1..{dim} including embedding_dim {dim}, "
            f"got {dims!r}"[:200]
        )


def _io(data: dict[str, Any]) -> None:
    names = [t["name"] for t in data["inputs"]]
    for need in REQUIRED_INPUTS:
        if need not in names:
            raise _fail(f"inputs must include {need!r}, got {names}")
    outputs = {t["name"]: t["shape"] for t in data["outputs"]}
    task = TASKS[data.get("task", EMBED.name)]
    missing = [n for n in task.outputs if n not in outputs]
    if missing:
        raise _fail(f"outputs must include {', '.join(map(repr, missing))}, got {list(outputs)}")
    if task.row_shape != "dim":
        return
    last = outputs[task.output][-1:] or [None]
    if _is_int(last[0]) and last[0] != data["embedding_dim"]:
        raise _fail(
            f"embedding_dim {data['embedding_dim']} does not match the {task.output} output "
            f"width {last[0]}"
        )


def check_fields(
    data: Any, known: list[str], required: list[str], choices: dict[str, tuple[str, ...]]
) -> None:
    """Check a parsed manifest: an object, only known fields, each of the right type/range;
    `choices`: the allowed values of string fields (pooling, precision)."""
    if not isinstance(data, dict):
        raise _fail(f"must be a JSON object, got {_name(data)}")
    for key in data:
        if key not in known:
            raise _fail(f"unknown field {str(key)[:80]!r}")
    for key in required:
        if key not in data:
            raise _fail(f"missing field {key!r}")
    for key, check in FIELD_CHECKS.items():
        if key in data:
            check(data[key])
    for key, allowed in choices.items():
        if key in data:
            _choice(key, allowed)(data[key])
    _dims(data)
    _io(data)


def inside(root: Path, name: str, what: str) -> Path:
    """`root / name` resolved (symlinks followed), refused unless it stays inside `root`
    (which must be resolved already). Absolute names and `..` are refused outright."""
    pure = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or pure.is_absolute()
        or PureWindowsPath(name).is_absolute()
        or "\\" in name
        or ".." in pure.parts
    ):
        raise _fail(f"{what} {name[:200]!r} must be a relative path inside the artifact folder")
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise _fail(f"{what} {name[:200]!r} resolves outside the artifact folder")
    return path


def check_no_escaping_links(root: Path, limit: int = 10_000) -> None:
    """Refuse any symlink in the artifact folder that resolves outside it (onnxruntime 1.31
    refuses such external data itself; older versions may not). At most `limit` entries."""
    seen = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                seen += 1
                if seen > limit:
                    raise _fail(f"the artifact folder holds more than {limit} entries")
                if entry.is_symlink():
                    inside(root, os.path.relpath(entry.path, root), "symlink")
                elif entry.is_dir():
                    stack.append(Path(entry.path))
