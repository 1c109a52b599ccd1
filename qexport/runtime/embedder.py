"""Embedder: the public runtime API.

Pipeline: a helper thread formats, tokenises and pads the next chunk of texts while the
session runs the current one (onnxruntime and tokenizers release the GIL); each chunk goes
through the runtime's one row loop (`core.RowRunner`: token-budget batches, right padding,
IO binding on CUDA so only the [batch, dim] float32 output is copied back, NaN/Inf checked).
The task's post-processing (`tasks.EMBED`: Matryoshka slice + renormalise) comes last.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..tasks import EMBED
from .core import Prepared
from .model import TaskModel
from .session import Opened
from .tokenize import Encoded, TextEncoder, text_list, truncation_message

# embed() tokenises this many texts at a time (sorted and packed within the window); the
# next window is tokenised while the current one runs
WINDOW = 2048


class Embedder(TaskModel):
    """Embed texts with a qexport artifact.

    >>> emb = Embedder("out")                                   # doctest: +SKIP
    >>> docs = emb.embed(["The capital of China is Beijing."])  # doctest: +SKIP
    >>> qs = emb.embed(["capital of China?"], instruction=emb.default_instruction, dim=256)  # doctest: +SKIP

    `max_batch_tokens` bounds each forward pass by padded tokens (rows x longest row; default
    4,096 on CPU, 16,384 on CUDA: `runtime.batching.default_max_batch_tokens`);
    `io_binding` (default: on when the session runs on CUDA) binds inputs and the output
    explicitly so that only the [batch, dim] embedding crosses back to the host.
    `session_options` replaces qexport's onnxruntime options (runtime.session.session_options;
    start from those, e.g. to enable profiling).
    The manifest's fields and paths are always checked (ManifestError); `verify=True` also
    checks every file's sha256 against it, which costs more than the load itself (about
    1.5 s/GB from the page cache, 2.3-3 s/GB from disk on our 2-core machine; loading
    without it ~0.6-1 s/GB), so it is off by default here and on by default in the long-lived
    commands (`serve`, `embed`, `validate`): pass it for artifacts that came from elsewhere.
    """

    task = EMBED
    encoder: TextEncoder

    def _encoder(self, opened: Opened) -> TextEncoder:
        m = opened.manifest
        return TextEncoder(
            opened.path, m.max_length, m.instruction_template, tokenizer_file=m.tokenizer_file
        )

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def default_instruction(self) -> str | None:
        return self.manifest.default_instruction

    # -- checks -----------------------------------------------------------------------------

    def _check(self, texts: Sequence[str], dim: int | None) -> list[str]:
        texts = text_list(texts, "texts", "embed")
        self._check_dim(dim)
        return texts

    def _check_dim(self, dim: int | None) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))):
            raise ValueError(f"dim must be an integer, got {type(dim).__name__} {dim!r}")
        if dim is not None and dim not in self.manifest.allowed_dims:
            raise ValueError(
                f"dim {dim} is not allowed; allowed sizes: {self.manifest.allowed_dims}"
            )

    # -- building blocks ----------------------------------------------------------------------

    def tokenize(
        self, texts: Sequence[str], *, instruction: str | None = None
    ) -> tuple[list[list[int]], list[list[int]], int, int]:
        """Validate, format and tokenise: (ids, type_ids, texts truncated, tokens dropped).
        Does not warn; callers decide how to report truncation."""
        enc = self._tokenize(self._check(texts, None), instruction)
        return enc.ids, enc.type_ids, enc.truncated, enc.dropped

    def _tokenize(self, texts: list[str], instruction: str | None) -> Encoded:
        return self.encoder.encode(self.encoder.format(texts, instruction), warn=False)

    def run_batch(self, ids: list[list[int]], type_ids: list[list[int]]) -> np.ndarray:
        """One padded forward pass; returns float32 [len(ids), hidden]."""
        return self.core.run_feed(self.core.feed(ids, type_ids))

    def prepare(
        self,
        ids: list[list[int]],
        type_ids: list[list[int]] | None = None,
        *,
        batch_size: int = 32,
        truncated: int = 0,
        dropped: int = 0,
    ) -> Prepared:
        """Pack tokenised rows into token-budget batches (at most `batch_size` rows each)."""
        return self.core.prepare(
            ids, type_ids, batch_size=batch_size, truncated=truncated, dropped=dropped
        )

    def run_prepared(self, prepared: Prepared) -> np.ndarray:
        """Run every batch; float32 [n, hidden] in the original row order, NaN/Inf checked."""
        return self.core.run_prepared(prepared)

    def truncate_dim(self, out: np.ndarray, dim: int | None) -> np.ndarray:
        """Matryoshka: keep the first `dim` values and renormalise (when the model normalises)."""
        self._check_dim(dim)
        return EMBED.postprocess(out, dim, normalize=self.manifest.normalize)

    def _prepare_texts(
        self, texts: Sequence[str], instruction: str | None, rows: int, checked: bool = False
    ) -> Prepared:
        texts = list(texts) if checked else self._check(texts, None)
        enc = self._tokenize(texts, instruction)
        prepared = self.prepare(
            enc.ids, enc.type_ids, batch_size=rows, truncated=enc.truncated, dropped=enc.dropped
        )
        prepared.clipped = enc.clipped
        return prepared

    def _pipeline(
        self, chunks: Iterable[Sequence[str]], instruction: str | None, rows: int
    ) -> Iterator[tuple[Prepared, np.ndarray]]:
        """Tokenise chunk k+1 in a helper thread while chunk k runs."""
        it = iter(chunks)

        def next_prepared() -> Prepared | None:
            chunk = next(it, None)
            return None if chunk is None else self._prepare_texts(chunk, instruction, rows)

        with ThreadPoolExecutor(1, thread_name_prefix="qexport-tokenize") as pool:
            pending = pool.submit(next_prepared)
            while (prepared := pending.result()) is not None:
                pending = pool.submit(next_prepared)
                yield prepared, self.run_prepared(prepared)

    def _warn_truncation(self, parts: Sequence[Prepared]) -> None:
        truncated = sum(p.truncated for p in parts)
        if truncated:
            dropped, clipped = sum(p.dropped for p in parts), sum(p.clipped for p in parts)
            limit = self.encoder.max_length
            warnings.warn(truncation_message(truncated, dropped, limit, clipped), stacklevel=3)

    # -- public entry points ------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Embed `texts` (documents as they are; queries with `instruction`), returning float32
        [len(texts), dim or hidden], rows L2-normalised, in input order.

        Batches hold at most `batch_size` rows and `max_batch_tokens` padded tokens."""
        texts = self._check(texts, dim)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        windows = [texts[i : i + WINDOW] for i in range(0, len(texts), WINDOW)]
        if len(windows) == 1:
            prepared = self._prepare_texts(texts, instruction, batch_size, checked=True)
            parts = [(prepared, self.run_prepared(prepared))]
        else:
            parts = list(self._pipeline(windows, instruction, batch_size))
        self._warn_truncation([p for p, _ in parts])
        out = parts[0][1] if len(parts) == 1 else np.concatenate([o for _, o in parts])
        return self.truncate_dim(out, dim)

    def embed_chunks(
        self,
        chunks: Iterable[Sequence[str]],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        batch_size: int = 256,
    ) -> Iterator[np.ndarray]:
        """Embed a stream of text chunks (e.g. a corpus read piece by piece), yielding one
        float32 [len(chunk), dim or hidden] array per chunk, in order. The next chunk is read
        and tokenised in a helper thread while the current one runs."""
        self._check_dim(dim)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for prepared, out in self._pipeline(chunks, instruction, batch_size):
            self._warn_truncation([prepared])
            yield self.truncate_dim(out, dim)
