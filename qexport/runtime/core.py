"""The one loop that runs token rows through a graph, for every task and every caller.

`RowRunner` plans token-budget batches (`batching.plan_batches`), right-pads them with the
artifact's pad id, runs the session (with IO binding on CUDA: only the read output comes
back) and checks the result is finite. `Embedder`, `Reranker`, the server's batcher,
calibration and the quantization checks all run rows through it; what a row means (a text, a
query-document pair) and what is done with its output (Matryoshka, sigmoid) is the task's
(`qexport.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .batching import default_max_batch_tokens, plan_batches
from .session import load_onnxruntime
from .tokenize import pad_right

if TYPE_CHECKING:
    import onnxruntime as ort

Feed = dict[str, np.ndarray]


@dataclass
class Prepared:
    """Rows tokenised and padded into batches, ready to run."""

    n: int
    batches: list[tuple[np.ndarray, Feed]]  # (row indices, feed)
    tokens: list[int]  # tokens per row after truncation
    truncated: int = 0
    dropped: int = 0  # a lower bound when texts were clipped before tokenising
    clipped: int = 0  # texts tokenised from a prefix only (TextEncoder.clip_chars)


class RowRunner:
    """Run right-padded token rows through `session` and collect `output` per row.

    `unit` names a row in errors ("text", "pair"); `precision` is named when the output
    overflows. `io_binding` defaults to on when the session runs on CUDA, `max_batch_tokens`
    to `batching.default_max_batch_tokens` of the session's device (4,096 CPU, 16,384 CUDA)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        output: str,
        *,
        pad_id: int = 0,
        max_batch_tokens: int | None = None,
        io_binding: bool | None = None,
        unit: str = "row",
        precision: str = "",
    ) -> None:
        check_budget(max_batch_tokens)
        self.session = session
        self.output = output
        self.pad_id = int(pad_id)
        self.unit = unit
        self.precision = precision
        self.inputs = [i.name for i in session.get_inputs()]
        self.on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(self.on_cuda)
        self.io_binding = self.on_cuda if io_binding is None else bool(io_binding)
        self.device_id = 0
        if self.on_cuda:
            opts = session.get_provider_options().get("CUDAExecutionProvider", {})
            self.device_id = int(opts.get("device_id", 0))

    # -- building blocks ----------------------------------------------------------------------

    def feed(self, ids: list[list[int]], type_ids: list[list[int]] | None = None) -> Feed:
        input_ids, mask = pad_right(ids, self.pad_id)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            types = type_ids if type_ids is not None else [[0] * len(r) for r in ids]
            feed["token_type_ids"] = pad_right(types)[0]
        return feed

    def run_feed(self, feed: Feed) -> np.ndarray:
        """One forward pass; the output as float32."""
        if not self.io_binding:
            (out,) = self.session.run([self.output], feed)
            return np.asarray(out, dtype=np.float32)
        binding = self.session.io_binding()
        if self.on_cuda:
            for name, arr in feed.items():  # one host-to-device copy per input
                binding.bind_ortvalue_input(
                    name,
                    load_onnxruntime().OrtValue.ortvalue_from_numpy(arr, "cuda", self.device_id),
                )
            binding.bind_output(self.output, "cuda", self.device_id)
        else:
            for name, arr in feed.items():
                binding.bind_cpu_input(name, arr)
            binding.bind_output(self.output, "cpu")
        self.session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()  # only the bound output crosses back
        return np.asarray(out, dtype=np.float32)

    def prepare(
        self,
        ids: list[list[int]],
        type_ids: list[list[int]] | None = None,
        *,
        batch_size: int = 32,
        truncated: int = 0,
        dropped: int = 0,
    ) -> Prepared:
        """Pack rows into token-budget batches (at most `batch_size` rows each)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        lengths = [len(r) for r in ids]
        batches = [
            (idx, self.feed([ids[i] for i in idx], _pick(type_ids, idx)))
            for idx in plan_batches(lengths, self.max_batch_tokens, batch_size)
        ]
        return Prepared(len(ids), batches, lengths, truncated, dropped)

    def run_prepared(self, prepared: Prepared) -> np.ndarray:
        """Every batch, rows back in their input order, NaN/Inf checked."""
        out: np.ndarray | None = None
        for idx, feed in prepared.batches:
            got = self.run_feed(feed)
            if out is None:
                out = np.empty((prepared.n, *got.shape[1:]), dtype=np.float32)
            out[idx] = got
        if out is None:
            raise ValueError("no rows to run")
        self.check_finite(out)
        return out

    def run(
        self,
        ids: list[list[int]],
        type_ids: list[list[int]] | None = None,
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Plan, pad, run, check: float32 [len(ids), *row shape] in input order."""
        return self.run_prepared(self.prepare(ids, type_ids, batch_size=batch_size))

    def check_finite(self, out: np.ndarray) -> None:
        finite = np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            precision = f"precision {self.precision} " if self.precision else "the precision "
            raise FloatingPointError(
                f"the model produced NaN/Inf for {len(bad)} {self.unit}(s) (first index "
                f"{int(bad[0])}); {precision}may overflow for this model"
            )


def check_budget(max_batch_tokens: int | None) -> None:
    """None (the device's default) or a positive integer."""
    if max_batch_tokens is not None and (
        isinstance(max_batch_tokens, bool)
        or not isinstance(max_batch_tokens, int)
        or max_batch_tokens < 1
    ):
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens!r}")


def _pick(rows: list[list[int]] | None, idx: np.ndarray) -> list[list[int]] | None:
    return None if rows is None else [rows[i] for i in idx]
