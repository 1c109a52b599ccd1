"""The Qwen3-Reranker model card's "Transformers Usage" recipe, literally, in PyTorch.

This is the reference the reranker export is judged against (tests, `qexport validate`, the
bench). It shares no code with the export or the runtime: its own prompt strings (copied from
the card), transformers' tokenizer loaded with padding_side='left', AutoModelForCausalLM, the
full next-token logits at the last position, log_softmax over [no, yes].
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

CARD_PREFIX = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def format_instruction(instruction: str | None, query: str, doc: str) -> str:
    if instruction is None:
        instruction = CARD_TASK
    # the card's own line (str.format, kept as written)
    output = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(  # noqa: UP032
        instruction=instruction, query=query, doc=doc
    )
    return output


class CardReranker:
    """`scores(pairs)` and `logodds(pairs)` exactly as the card computes them."""

    def __init__(
        self,
        folder: str | Path,
        *,
        max_length: int = 8192,
        dtype: str = "fp32",
        device: str = "cpu",
        attn_implementation: str | None = None,
        last_logits_only: bool = False,
    ) -> None:
        """`last_logits_only`: pass `logits_to_keep=1` to the model (not the card: it computes
        the [batch, seq, vocab] logits and keeps the last row); same scores, less work."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        kw: dict[str, Any] = {"dtype": torch_dtype}
        if attn_implementation:
            kw["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kw)
        self.model = model.to(device).eval()  # type: ignore[arg-type]
        self.device = device
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        self.extra = {"logits_to_keep": 1} if last_logits_only else {}
        self.prefix_tokens = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)

    def process_inputs(self, pairs: list[str]) -> Any:
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        with warnings.catch_warnings():  # "max_length is ignored when padding=True"
            warnings.simplefilter("ignore", UserWarning)
            inputs = self.tokenizer.pad(
                inputs, padding=True, return_tensors="pt", max_length=self.max_length
            )
        for key in inputs:
            inputs[key] = inputs[key].to(self.model.device)
        return inputs

    def _two_way(self, inputs: Any) -> Any:
        with self.torch.no_grad():
            batch_scores = self.model(**inputs, **self.extra).logits[:, -1, :]
            true_vector = batch_scores[:, self.token_true_id]
            false_vector = batch_scores[:, self.token_false_id]
            batch_scores = self.torch.stack([false_vector, true_vector], dim=1)
            return self.torch.nn.functional.log_softmax(batch_scores, dim=1)

    def pairs(self, query: str, documents: list[str], instruction: str | None = None) -> list[str]:
        return [format_instruction(instruction, query, d) for d in documents]

    def scores(self, pairs: list[str], batch_size: int = 8) -> np.ndarray:
        """P(yes) per pair: `batch_scores[:, 1].exp()` of the card."""
        return np.exp(self.log_probs(pairs, batch_size)[:, 1])

    def logodds(self, pairs: list[str], batch_size: int = 8) -> np.ndarray:
        """log P(yes) - log P(no) = logit(yes) - logit(no), float64."""
        lp = self.log_probs(pairs, batch_size)
        return lp[:, 1] - lp[:, 0]

    def log_probs(self, pairs: list[str], batch_size: int = 8) -> np.ndarray:
        out = []
        for i in range(0, len(pairs), batch_size):
            lp = self._two_way(self.process_inputs(pairs[i : i + batch_size]))
            out.append(lp.float().cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    def logodds_ids(self, rows: list[list[int]], batch_size: int = 8) -> np.ndarray:
        """log-odds of pairs already tokenised with their prompt (the speed harness), padded
        as the card pads (left), float64."""
        out = []
        for i in range(0, len(rows), batch_size):
            inputs = self.tokenizer.pad(
                {"input_ids": rows[i : i + batch_size]}, padding=True, return_tensors="pt"
            )
            lp = self._two_way({k: v.to(self.model.device) for k, v in inputs.items()})
            lp = lp.float().cpu().numpy().astype(np.float64)
            out.append(lp[:, 1] - lp[:, 0])
        return np.concatenate(out)

    def input_ids(self, pairs: list[str]) -> list[list[int]]:
        """The card's token ids per pair (padding removed)."""
        inputs = self.process_inputs(pairs)
        ids, mask = inputs["input_ids"].cpu().numpy(), inputs["attention_mask"].cpu().numpy()
        return [row[m.astype(bool)].tolist() for row, m in zip(ids, mask, strict=True)]
