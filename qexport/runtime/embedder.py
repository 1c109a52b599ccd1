"""Embedder: the public runtime API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..manifest import Manifest, load_manifest
from .session import create_session
from .tokenize import TextEncoder, pad_right


class Embedder:
    """Embed texts with a qexport artifact.

    >>> emb = Embedder("out")                                   # doctest: +SKIP
    >>> docs = emb.embed(["The capital of China is Beijing."])  # doctest: +SKIP
    >>> qs = emb.embed(["capital of China?"], instruction=emb.default_instruction, dim=256)  # doctest: +SKIP
    """

    def __init__(
        self,
        artifact: str | Path,
        device: str = "auto",
        *,
        threads: int | None = None,
        verify: bool = False,
    ) -> None:
        self.path = Path(artifact)
        self.manifest: Manifest = load_manifest(self.path, verify=verify)
        m = self.manifest
        self.session = create_session(self.path / m.graph_file, device, m.precision, threads)
        self.encoder = TextEncoder(self.path, m.max_length, m.instruction_template)
        self._inputs = m.input_names
        self._output = "sentence_embedding"

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def default_instruction(self) -> str | None:
        return self.manifest.default_instruction

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def _check(self, texts: Sequence[str], dim: int | None) -> list[str]:
        if isinstance(texts, str):
            raise ValueError(
                "texts must be a list of strings, not a single string: wrap it in a list"
            )
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: nothing to embed")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] is {type(t).__name__}, not str")
        if dim is not None and dim not in self.manifest.allowed_dims:
            raise ValueError(
                f"dim {dim} is not allowed; allowed sizes: {self.manifest.allowed_dims}"
            )
        return texts

    def run_batch(self, ids: list[list[int]], type_ids: list[list[int]]) -> np.ndarray:
        """One padded forward pass; returns float32 [len(ids), hidden]."""
        input_ids, mask = pad_right(ids)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = pad_right(type_ids)[0]
        (out,) = self.session.run([self._output], feed)
        return np.asarray(out, dtype=np.float32)

    def embed(
        self,
        texts: Sequence[str],
        *,
        instruction: str | None = None,
        dim: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Embed `texts` (documents as they are; queries with `instruction`), returning float32
        [len(texts), dim or hidden], rows L2-normalised, in input order."""
        texts = self._check(texts, dim)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        enc = self.encoder.encode(self.encoder.format(texts, instruction))
        order = np.argsort([len(r) for r in enc.ids], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.run_batch([enc.ids[i] for i in idx], [enc.type_ids[i] for i in idx])
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
            raise FloatingPointError(
                f"the model produced NaN/Inf for {len(bad)} text(s) (first index {int(bad[0])}); "
                f"precision {self.manifest.precision} may overflow for this model"
            )
        if dim is not None and dim != self.dim:
            out = out[:, :dim]
            if self.manifest.normalize:
                out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            out = np.ascontiguousarray(out, dtype=np.float32)
        return out
