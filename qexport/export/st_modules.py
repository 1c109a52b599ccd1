"""sentence-transformers folders of every version, read by what each module is.

`modules.json` names each module by where its class lived when the folder was saved; the class
paths moved between releases, and so did the files each module's `save()` writes. Every
spelling of one class reads the same (checked against the releases' own save code):

modules.json `type`
  Transformer  1.x-5.3  sentence_transformers.models.Transformer
               5.4-6.x  sentence_transformers.base.modules.transformer.Transformer
  Pooling      1.x-5.3  sentence_transformers.models.Pooling
               5.4-6.x  sentence_transformers.sentence_transformer.modules.pooling.Pooling
  Dense        1.x-5.3  sentence_transformers.models.Dense
               5.4-6.x  sentence_transformers.base.modules.dense.Dense
  Normalize    1.x-5.3  sentence_transformers.models.Normalize
               5.4-5.x  sentence_transformers.sentence_transformer.modules.normalize.Normalize
               6.x      sentence_transformers.base.modules.normalize.Normalize
  and the package re-exports the loader resolves to the same classes (hand-written folders):
  sentence_transformers.sentence_transformer.modules.<Class>, sentence_transformers.base.
  modules.{Transformer,Dense,Normalize}

where the Transformer lives: 1.x saved every module in its own folder (`0_Transformer/`: its
config.json, weights, tokenizer and sentence_bert_config.json); 2.x and later the folder root

module files
  Pooling/config.json      <= 5.x: word_embedding_dimension + one boolean per mode
                           (pooling_mode_{cls_token,mean_tokens,max_tokens,mean_sqrt_len_tokens};
                           weightedmean_tokens and lasttoken from 2.3; include_prompt from 2.4)
                           6.x: embedding_dimension, pooling_mode (a name, or a list to
                           concatenate), include_prompt
  Dense/config.json        in_features, out_features, bias, activation_function; 6.x adds
                           module_input_name / module_output_name (use_residual only when true)
  Dense weights            <= 3.0.0: pytorch_model.bin; from 3.0.1: model.safetensors
  Normalize                <= 5.x: nothing (an empty folder); 6.x: config.json with
                           module_input_name / module_output_name
  sentence_bert_config.json  (0.x: sentence_<arch>_config.json) <= 5.x: max_seq_length,
                           do_lower_case; 6.x: transformer_task, modality_config,
                           module_output_name, and the length only as the tokenizer's
                           model_max_length (tokenizer_config.json; older releases fell back to
                           it too)
  config_sentence_transformers.json  prompts, default_prompt_name, similarity_fn_name (>= 3.0),
                           model_type (>= 5.0), truncate_dim (6.x)

Anything with which sentence-transformers would compute what the artifact does not (an unknown
module, a token-level Dense or Normalize, a default prompt, a truncated output, a non-embedding
Transformer task, texts rendered through a chat template, lowercasing the tokenizer does not
do) is refused with one line naming the file and the setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .families import UnsupportedModelError
from .st_dense import DenseError, DenseLayer, read_dense

TRANSFORMER, POOLING, DENSE, NORMALIZE = "Transformer", "Pooling", "Dense", "Normalize"
KINDS = (TRANSFORMER, POOLING, DENSE, NORMALIZE)

# modules.json `type` -> the module it is
TYPE_NAMES: dict[str, str] = {
    # 1.x - 5.3 write the module's file, named like its class
    **{f"sentence_transformers.models.{kind}": kind for kind in KINDS},
    # 5.4 and later write module path + class
    "sentence_transformers.base.modules.transformer.Transformer": TRANSFORMER,
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": POOLING,
    "sentence_transformers.base.modules.dense.Dense": DENSE,
    "sentence_transformers.sentence_transformer.modules.normalize.Normalize": NORMALIZE,  # 5.4-5.x
    "sentence_transformers.base.modules.normalize.Normalize": NORMALIZE,  # 6.x
    # the packages' re-exports (hand-written folders)
    **{f"sentence_transformers.sentence_transformer.modules.{kind}": kind for kind in KINDS},
    **{f"sentence_transformers.base.modules.{k}": k for k in (TRANSFORMER, DENSE, NORMALIZE)},
}

# 1.x - 5.x: one boolean per mode; 6.x: `pooling_mode` by name. -> qexport's pooling names
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_NAMES = {
    "cls": "cls", "max": "max", "mean": "mean", "mean_sqrt_len_tokens": "mean_sqrt_len",
    "weightedmean": "weightedmean", "lasttoken": "lasttoken",
    # the constructor's older spellings
    "cls_token": "cls", "max_tokens": "max", "mean_tokens": "mean", "mean_sqrt_len": "mean_sqrt_len",
}  # fmt: skip
SUPPORTED_POOLING = ("cls", "max", "mean", "mean_sqrt_len", "lasttoken")

# the Transformer module's config, first found wins (0.x named it after the architecture)
TRANSFORMER_CONFIGS = tuple(
    f"sentence_{arch}_config.json"
    for arch in ("bert", "roberta", "distilbert", "camembert", "albert", "xlm-roberta", "xlnet")
)
SENTENCE_EMBEDDING = "sentence_embedding"
# model_max_length above this is transformers' "no limit" sentinel (int(1e30)), not a length
_NO_LIMIT = 10**9


class StFolderError(ValueError):
    """A sentence-transformers file cannot be read."""


@dataclass
class Modules:
    """What modules.json describes after the Transformer."""

    pooling: str
    normalize: bool
    dense: list[DenseLayer] = field(default_factory=list)


@dataclass
class StConfig:
    """config_sentence_transformers.json."""

    prompts: dict[str, str] = field(default_factory=dict)
    similarity: str = "cosine"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StFolderError(f"cannot read {path}: {exc}") from exc


def _optional_json(path: Path) -> dict[str, Any]:
    """A module's config.json; absent (Normalize <= 5.x, an empty folder) reads as {}."""
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise StFolderError(f"{path} is not a JSON object")
    return data


def module_kind(module: Any) -> str:
    """The module a modules.json entry is, or a one-line error naming it."""
    kind = TYPE_NAMES.get(module.get("type", "")) if isinstance(module, dict) else None
    if kind is None:
        desc = module.get("type") if isinstance(module, dict) else module
        where = module.get("path") if isinstance(module, dict) else "?"
        raise UnsupportedModelError(
            f"sentence-transformers module {desc!r} ({where}) is not supported; supported: "
            "Transformer, Pooling, Dense, Normalize (as sentence-transformers 1.x-6.x name them)"
        )
    return kind


def read_pooling(path: Path) -> str:
    """The Pooling module's one mode, in qexport's names."""
    cfg = _optional_json(path / "config.json")
    if "pooling_mode" in cfg:  # 6.x: a name, or a list of names to concatenate
        raw = cfg["pooling_mode"]
        names = raw if isinstance(raw, list) else [raw]
        modes = [POOLING_NAMES.get(str(n), str(n)) for n in names]
    else:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if cfg.get(key)]
    if len(modes) != 1:
        raise UnsupportedModelError(
            f"pooling must be exactly one mode, found {modes or 'none'} ({path.name}/config.json)"
        )
    if modes[0] not in SUPPORTED_POOLING:
        raise UnsupportedModelError(
            f"pooling mode {modes[0]!r} is not supported; supported: {', '.join(SUPPORTED_POOLING)}"
        )
    if cfg.get("include_prompt") is False:
        raise UnsupportedModelError("pooling with include_prompt=false is not supported")
    return modes[0]


def _check_sentence_level(path: Path, what: str) -> None:
    """Dense / Normalize (6.x) may read and write another feature (e.g. token embeddings)."""
    cfg = _optional_json(path / "config.json")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, SENTENCE_EMBEDDING) != SENTENCE_EMBEDDING:
            raise UnsupportedModelError(
                f"{what} {key}={cfg[key]!r} ({path.name}/config.json) is not supported; "
                f"only {SENTENCE_EMBEDDING!r} is"
            )


def _read_dense(path: Path) -> DenseLayer:
    try:
        return read_dense(path)
    except DenseError as exc:
        raise UnsupportedModelError(str(exc)) from exc


def _module_dir(folder: Path, entry: dict[str, Any]) -> Path:
    sub = Path(str(entry.get("path", "")))
    if sub.is_absolute() or ".." in sub.parts:
        raise UnsupportedModelError(f"modules.json: module path {str(sub)!r} leaves the folder")
    return folder / sub


def transformer_dir(folder: Path) -> Path:
    """Where the Transformer module keeps config.json, weights, tokenizer and
    sentence_bert_config.json: the folder itself (2.x and later), or the subfolder modules.json
    names (1.x saved every module in its own, `0_Transformer`)."""
    if not (folder / "modules.json").is_file():
        return folder
    entries = read_json(folder / "modules.json")
    first = entries[0] if isinstance(entries, list) and entries else None
    if not isinstance(first, dict) or TYPE_NAMES.get(first.get("type", "")) != TRANSFORMER:
        return folder  # read_modules says what is wrong
    return _module_dir(folder, first)


def read_modules(folder: Path) -> Modules:
    """modules.json: the Transformer (first), Pooling, any Dense layers on the pooled vector,
    then Normalize."""
    entries = read_json(folder / "modules.json")
    if not isinstance(entries, list) or not entries:
        raise StFolderError(f"{folder / 'modules.json'} is not a list of modules")
    kinds = [module_kind(m) for m in entries]
    if kinds[0] != TRANSFORMER or TRANSFORMER in kinds[1:]:
        raise UnsupportedModelError(
            f"modules.json must start with its one Transformer module, found {kinds}"
        )
    if kinds.count(POOLING) != 1:
        raise UnsupportedModelError(f"modules.json needs exactly one Pooling module, found {kinds}")
    pooling, normalize, dense = "", False, list[DenseLayer]()
    for entry, kind in zip(entries[1:], kinds[1:], strict=True):
        path = _module_dir(folder, entry)
        if kind == POOLING:
            if normalize or dense:
                raise UnsupportedModelError(
                    f"Pooling must come right after the Transformer, found {kinds}"
                )
            pooling = read_pooling(path)
        elif kind == DENSE:
            if not pooling or normalize:
                raise UnsupportedModelError(
                    f"Dense module {entry.get('path')!r} must come after Pooling and before "
                    "Normalize (token-level or post-normalise Dense is not supported)"
                )
            dense.append(_read_dense(path))  # read_dense checks its input and output names
        else:
            if not pooling:
                raise UnsupportedModelError(
                    f"Normalize module {entry.get('path')!r} before Pooling is not supported"
                )
            _check_sentence_level(path, "Normalize")
            normalize = True
    return Modules(pooling=pooling, normalize=normalize, dense=dense)


def read_st_config(folder: Path) -> StConfig:
    """config_sentence_transformers.json (absent: no prompts, cosine)."""
    path = folder / "config_sentence_transformers.json"
    data = _optional_json(path)
    model_type = data.get("model_type", "SentenceTransformer")
    if model_type not in ("SentenceTransformer", "sentence-transformers", "sentence-transformer"):
        raise UnsupportedModelError(
            f"{path.name}: model_type {model_type!r} is not an embedding model; "
            "supported: SentenceTransformer"
        )
    raw = data.get("prompts") or {}
    if not isinstance(raw, dict):
        raise StFolderError(f"{path}: prompts is not an object")
    prompts = {k: v for k, v in raw.items() if isinstance(v, str)}
    default = data.get("default_prompt_name")
    if default is not None and prompts.get(default, ""):
        raise UnsupportedModelError(
            f"{path.name}: default_prompt_name {default!r} makes sentence-transformers prefix "
            "every text with that prompt; not supported (set it to null)"
        )
    if data.get("truncate_dim") is not None:
        raise UnsupportedModelError(
            f"{path.name}: truncate_dim={data['truncate_dim']!r} is not supported (set it to "
            "null; the artifact's embeddings can be cut at run time instead)"
        )
    return StConfig(prompts=prompts, similarity=data.get("similarity_fn_name") or "cosine")


def _transformer_config(folder: Path) -> tuple[str, dict[str, Any]]:
    for name in TRANSFORMER_CONFIGS:
        if (folder / name).is_file():
            return name, _optional_json(folder / name)
    return TRANSFORMER_CONFIGS[0], {}


def _check_task(name: str, cfg: dict[str, Any]) -> None:
    """6.x: the Transformer must give token embeddings from a plain forward pass."""
    task = cfg.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise UnsupportedModelError(
            f"{name}: transformer_task {task!r} is not supported; supported: feature-extraction"
        )
    modalities = cfg.get("modality_config") or {}
    if not isinstance(modalities, dict) or not isinstance(modalities.get("text", {}), dict):
        raise StFolderError(f"{name}: modality_config is not an object of objects")
    if "message" in modalities:
        raise UnsupportedModelError(
            f"{name}: modality_config has 'message', so sentence-transformers renders every text "
            "through the tokenizer's chat template; not supported (keep only 'text')"
        )
    text = modalities.get("text")
    if text is not None and (text.get("method"), text.get("method_output_name")) != (
        "forward",
        "last_hidden_state",
    ):
        raise UnsupportedModelError(
            f"{name}: text modality {text} is not supported; supported: the forward pass's "
            "last_hidden_state"
        )
    checks = {"module_output_name": "token_embeddings", "processing_kwargs": None,
              "query_length": None, "document_length": None, "query_expansion": None}  # fmt: skip
    for key, allowed in checks.items():
        if cfg.get(key) not in (allowed, None, {}):
            raise UnsupportedModelError(f"{name}: {key}={cfg[key]!r} is not supported")


def _tokenizer_lowercases(folder: Path) -> bool:
    """The tokenizer.json normaliser lowercases (BertNormalizer lowercase, or Lowercase)."""
    path = folder / "tokenizer.json"
    norm = read_json(path).get("normalizer") if path.is_file() else None
    stack = [norm]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "Lowercase" or (
            node.get("type") == "BertNormalizer" and node.get("lowercase")
        ):
            return True
        stack.extend(node.get("normalizers") or [])
    return False


def read_max_seq_length(folder: Path, tokenizer_dir: Path | None = None) -> int | None:
    """The Transformer module's length: `max_seq_length` of sentence_bert_config.json (<= 5.x);
    6.x saves it as the tokenizer's `model_max_length`, which is also what older versions
    fell back to. Checks the 6.x task settings and do_lower_case on the way."""
    model_dir = transformer_dir(folder)
    name, cfg = _transformer_config(model_dir)
    _check_task(name, cfg)
    tok_dir = tokenizer_dir or model_dir
    if cfg.get("do_lower_case") and not _tokenizer_lowercases(tok_dir):
        raise UnsupportedModelError(
            f"{name}: do_lower_case=true and the tokenizer does not lowercase; not supported"
        )
    if cfg.get("max_seq_length"):
        return int(cfg["max_seq_length"])
    if not (folder / "modules.json").is_file():
        return None  # not a sentence-transformers folder: the family's own rule
    tok_cfg = _optional_json(model_dir / "tokenizer_config.json")
    length = tok_cfg.get("model_max_length")
    if isinstance(length, (int, float)) and 0 < length < _NO_LIMIT:
        return int(length)
    return None
