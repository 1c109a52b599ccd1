"""The Ray engine's pieces that run on the cluster: the embedding actor and the checkpoint
filter that compares ids as strings. `ray` is imported only inside functions."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .output import embedding_table

FORWARD_ROWS = 256  # rows per forward pass at most (with max_batch_tokens), as the local engine


class EmbedBatch:
    """One Embedder per Ray actor (built from the artifact path on the actor's node).

    Takes a pyarrow batch with the id and text columns, returns the output table
    (`output.embedding_table`: `id` string, `embedding` list<float32>)."""

    def __init__(
        self,
        artifact: str,
        *,
        instruction: str | None,
        dim: int | None,
        max_batch_tokens: int | None,
        id_column: str,
        text_column: str,
        device: str,
        threads: int | None,
    ) -> None:
        from qexport.runtime import Embedder

        if threads is not None:  # whole CPUs of this actor, at most this node's cores
            threads = max(1, min(threads, os.cpu_count() or 1))
        kwargs: dict[str, Any] = {"device": device, "threads": threads}
        if max_batch_tokens is not None:
            kwargs["max_batch_tokens"] = max_batch_tokens
        self.embedder = Embedder(artifact, **kwargs)
        self.instruction = instruction
        self.dim = dim
        self.id_column = id_column
        self.text_column = text_column

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(
            texts, instruction=self.instruction, dim=self.dim, batch_size=FORWARD_ROWS
        )

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = pc.cast(batch[self.id_column], pa.string())
        texts = batch[self.text_column]
        for name, col in (("id", ids), ("text", texts)):
            if col.null_count:
                row = pc.index(pc.is_null(col), True).as_py()
                raise ValueError(f"{name} is missing (null) in a row (batch row {row})")
        return embedding_table(ids.combine_chunks(), self.embed(texts.to_pylist()))


def string_id_filter_cls(input_id_column: str) -> type:
    """Ray's checkpoint filter, comparing the input's id column, as strings, with the `id`
    column of the checkpoint (Ray's own compares raw values: an int64 input id never equals
    the string written). Built lazily so that this module imports without Ray; the class goes
    to the filter actor by value."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from ray.data.block import BlockAccessor
    from ray.data.checkpoint.checkpoint_filter import NumpyArrayBasedCheckpointFilter

    class StringIdCheckpointFilter(NumpyArrayBasedCheckpointFilter):
        def filter_rows_for_block(self, block: Any) -> Any:
            done = self.checkpointed_ids  # sorted (Ray's checkpoint manager sorts them)
            block = BlockAccessor.for_block(block).to_arrow()  # read_json may give pandas
            if done.shape[0] == 0 or block.num_rows == 0:
                return block
            ids = pc.fill_null(pc.cast(block[input_id_column], pa.string()), "")
            ids = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
            pos = np.minimum(np.searchsorted(done, ids), done.shape[0] - 1)
            return block.filter(pa.array(done[pos] != ids))

    return StringIdCheckpointFilter
