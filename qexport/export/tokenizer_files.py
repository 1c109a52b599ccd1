"""Tokenizer files for the artifact: copied from a checkpoint, or a byte-level tokenizer that
the package builds itself for the random models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
)
EOS = "<|endoftext|>"


def build_byte_tokenizer(folder: Path, model_max_length: int) -> None:
    """A byte-level BPE (256 byte tokens, no merges) that appends `<|endoftext|>` like the
    current Qwen3-Embedding tokenizer, loadable by both `tokenizers` and transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {EOS}:0", pair=f"$A:0 {EOS}:0 $B:1 {EOS}:1", special_tokens=[(EOS, eos_id)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": model_max_length,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files that exist in `src`; tokenizer.json is required (the runtime
    uses the `tokenizers` library, which reads only that file)."""
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{src} has no tokenizer.json (the runtime needs a fast tokenizer file)"
        )
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied
