"""The PyTorch reference: each family's official recipe (its spec's `reference`), run with
transformers.

LAST_TOKEN_CARD (the Qwen3-Embedding model card): tokenizer with padding_side="left", model
forward, last_token_pool, F.normalize; random models get the very same seeded weights as the
export. ST_PIPELINE: the checkpoint folder's own sentence-transformers pipeline. Instructions
are formatted with the spec's template (`ModelSource.head`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..export.families import SPECS
from ..export.families.spec import LAST_TOKEN_CARD
from ..export.source import ModelSource, resolve
from ..export.tokenizer_files import build_byte_tokenizer


def format_query(template: str | None, instruction: str | None, text: str) -> str:
    if instruction is None:
        return text
    if template is None:
        raise ValueError("this model has no instruction template")
    return template.format(instruction=instruction, text=text)


def _state_dict(src: ModelSource, n_layers: int) -> dict[str, Any]:
    import torch

    out = {}
    for name in src.weights.keys():
        if name.startswith("layers.") and int(name.split(".")[1]) >= n_layers:
            continue
        arr = src.weights.load(name).astype(np.float32)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


class TorchReference:
    """A transformers model with the same weights as an export of `model`."""

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | Path | None = None,
        layers: int | None = None,
        dtype: str = "fp32",
        attn_implementation: str = "sdpa",
        max_length: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        self.src = resolve(model, tokenizer=tokenizer)
        self.torch = torch
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but this torch has no CUDA device")
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        n_layers = self.src.config["num_hidden_layers"] if layers is None else layers
        if SPECS[self.src.family].reference == LAST_TOKEN_CARD:
            self._init_card(n_layers, attn_implementation, max_length)
        else:
            self._init_sentence_transformer(n_layers, max_length)

    def _init_card(self, n_layers: int, attn_implementation: str, max_length: int | None) -> None:
        """The model card's recipe: AutoModel from config.json with the export's weights, the
        tokenizer padding on the left."""
        torch = self.torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        cfg = dict(self.src.config)
        cfg["num_hidden_layers"] = n_layers
        cfg.pop("architectures", None)
        cfg.pop("max_window_layers", None)
        config = AutoConfig.for_model(**cfg)
        config._attn_implementation = attn_implementation
        with torch.device("meta"):
            self.model = AutoModel.from_config(config, attn_implementation=attn_implementation)
        self.model.load_state_dict(_state_dict(self.src, n_layers), strict=True, assign=True)
        self.model.rotary_emb.__init__(config)  # buffers are not in the state dict
        self.model.to(self.dtype)
        self.model.to(self.device)  # after the dtype: a bf16 4B needs no fp32 copy on the GPU
        self.model.eval()
        if self.src.tokenizer_dir is None:
            self._tmp = tempfile.TemporaryDirectory()
            build_byte_tokenizer(Path(self._tmp.name), 32768)
            tok_dir = Path(self._tmp.name)
        else:
            tok_dir = self.src.tokenizer_dir
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        self.tokenizer.padding_side = "left"
        self.max_length = max_length or int(cfg.get("max_position_embeddings", 8192))

    def _init_sentence_transformer(self, n_layers: int, max_length: int | None) -> None:
        """The model's own sentence-transformers pipeline, as published."""
        from sentence_transformers import SentenceTransformer

        if self.src.folder is None:
            raise NotImplementedError(
                f"no PyTorch reference for {self.src.spec!r}: family {self.src.family!r} needs "
                "a sentence-transformers checkpoint folder"
            )
        self.st = SentenceTransformer(str(self.src.folder), device=str(self.device))
        self.st.to(self.dtype)
        self.model = self.st[0].auto_model
        encoder = getattr(self.model, "encoder", None)
        if encoder is not None and n_layers < len(encoder.layer):  # a truncated export
            encoder.layer = encoder.layer[:n_layers]
        self.model.eval()
        if max_length is not None:
            self.st.max_seq_length = max_length
        self.max_length = int(self.st.max_seq_length or 512)
        self.tokenizer = self.st.tokenizer

    def tokenize(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def embed(
        self,
        texts: list[str],
        *,
        instruction: str | None = None,
        batch_size: int = 8,
        token_embeddings: bool = False,
    ) -> np.ndarray:
        torch = self.torch
        texts = [format_query(self.src.head.instruction_template, instruction, t) for t in texts]
        if hasattr(self, "st"):
            vectors = self.st.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=self.src.head.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(vectors, dtype=np.float32)
        outs = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize(texts[start : start + batch_size]).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                emb = last_token_pool(hidden, batch["attention_mask"])
                emb = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
                outs.append(emb.cpu().numpy())
        return np.concatenate(outs)

    def embed_ids(self, rows: list[list[int]], *, batch_size: int = 8) -> np.ndarray:
        """Embeddings of rows of token ids (the speed harness: tokenised once, outside the
        timing): padded by the tokenizer (the card recipe pads left), then the recipe's model
        forward, pooling and normalisation."""
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = self.tokenizer.pad(
                    {"input_ids": rows[start : start + batch_size]}, return_tensors="pt"
                ).to(self.device)
                if hasattr(self, "st"):
                    emb = self.st(dict(batch))["sentence_embedding"]
                else:
                    hidden = self.model(**batch).last_hidden_state
                    emb = last_token_pool(hidden, batch["attention_mask"])
                    emb = torch.nn.functional.normalize(emb.float(), p=2, dim=1)
                outs.append(emb.float().cpu().numpy())
        return np.concatenate(outs)


def last_token_pool(last_hidden_states: Any, attention_mask: Any) -> Any:
    """The model card's last_token_pool."""
    import torch

    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[
        torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths
    ]
