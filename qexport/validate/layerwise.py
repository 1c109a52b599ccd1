"""A memory-bounded PyTorch reference for full-size Qwen3 models: the forward pass in fp32 one
decoder layer at a time (transformers' own Qwen3DecoderLayer, RMSNorm and rotary modules), so
the 4B / 8B can be checked on a machine that cannot hold them in fp32 (16 / 30 GB).

Each text runs alone (no padding), so causal attention needs no mask: transformers' sdpa path
uses `is_causal` when attention_mask is None. Peak memory: the fp32 embedding table plus one
layer, plus the activations of one text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..export.families.qwen3 import SPEC as QWEN3
from ..export.source import resolve
from .reference import format_query


class LayerwiseReference:
    def __init__(
        self, model: str, *, tokenizer: str | None = None, layers: int | None = None
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        self.torch = torch
        self.src = resolve(model, tokenizer=tokenizer)
        if self.src.family != QWEN3.name:  # it is built from transformers' Qwen3 modules
            raise NotImplementedError(f"the layer-wise reference covers the {QWEN3.name} family")
        cfg = dict(self.src.config)
        cfg.pop("architectures", None)
        cfg.pop("max_window_layers", None)
        self.config: Any = AutoConfig.for_model(**cfg)  # a Qwen3Config
        self.config._attn_implementation = "sdpa"
        self.n_layers = self.config.num_hidden_layers if layers is None else layers
        tok_dir = tokenizer or self.src.tokenizer_dir
        if tok_dir is None:
            raise ValueError("pass tokenizer= (an artifact folder carries its tokenizer)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))

    def _tensor(self, name: str):  # type: ignore[no-untyped-def]
        arr = self.src.weights.load(name).astype(np.float32)
        return self.torch.from_numpy(np.ascontiguousarray(arr))

    def embed(self, texts: list[str], *, instruction: str | None = None) -> np.ndarray:
        torch = self.torch
        from transformers.models.qwen3.modeling_qwen3 import (
            Qwen3DecoderLayer,
            Qwen3RMSNorm,
            Qwen3RotaryEmbedding,
        )

        texts = [format_query(self.src.head.instruction_template, instruction, t) for t in texts]
        ids = [torch.tensor([self.tokenizer(t)["input_ids"]]) for t in texts]
        with torch.inference_mode():
            table = self._tensor("embed_tokens.weight")
            hidden = [table[x] for x in ids]  # [1, S, H] each
            del table
            rotary = Qwen3RotaryEmbedding(self.config)
            pos = [rotary(h, torch.arange(h.shape[1])[None, :]) for h in hidden]
            for i in range(self.n_layers):
                layer = Qwen3DecoderLayer(self.config, layer_idx=i)
                prefix = f"layers.{i}."
                state = {
                    k[len(prefix) :]: self._tensor(k)
                    for k in self.src.weights.keys()
                    if k.startswith(prefix)
                }
                layer.load_state_dict(state, strict=True)
                layer.eval()
                hidden = [_run(layer, h, p) for h, p in zip(hidden, pos, strict=True)]
                del layer, state
            norm = Qwen3RMSNorm(self.config.hidden_size, eps=self.config.rms_norm_eps)
            norm.weight.copy_(self._tensor("norm.weight"))
            out = torch.cat([norm(h)[:, -1] for h in hidden])
            return torch.nn.functional.normalize(out, dim=1).numpy()


def _run(layer, hidden, position_embeddings):  # type: ignore[no-untyped-def]
    out = layer(hidden, attention_mask=None, position_embeddings=position_embeddings)
    return out[0] if isinstance(out, tuple) else out
