"""The in-process engine behind `qexport embed`: resumable and exactly-once.

1. Scan the input (every record valid, ids unique) before any work.
2. Open `OUTPUT.parts/` (lock, fingerprint), skip the ids already committed there.
3. Stream the remaining records in chunks through `Embedder.embed_chunks` (the next chunk is
   read and tokenised while the current one runs) and commit each chunk as one part.
4. Check that the parts hold every input id exactly once, merge them into OUTPUT in input
   order (atomic rename), remove the parts folder.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import MANIFEST_NAME
from ..runtime import Embedder
from .io import (
    CorpusError,
    input_format,
    iter_records,
    output_format,
    scan_ids,
    write_npy,
    write_parquet,
)
from .parts import PartStore, parts_dir_for

log = logging.getLogger("qexport")


@dataclass
class EmbedSummary:
    rows: int
    resumed: int  # rows found committed at start
    dim: int
    seconds: float
    output: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def fingerprint(
    artifact: Path,
    input: Path,
    output: Path,
    *,
    instruction: str | None,
    dim: int | None,
    id_column: str,
    text_column: str,
) -> dict[str, Any]:
    """Everything that changes the vectors or the rows (not speed knobs like batch sizes)."""
    return {
        "artifact_manifest_sha256": _sha256(artifact / MANIFEST_NAME),
        "input": str(input.resolve()),
        "input_sha256": _sha256(input),
        "output_format": output_format(output),
        "instruction": instruction,
        "dim": dim,
        "id_column": id_column,
        "text_column": text_column,
    }


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, quiet when stderr is not a terminal (or tqdm is absent)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(
        total=total,
        initial=initial,
        unit="text",
        desc="embed",
        disable=not enabled or not sys.stderr.isatty(),
        file=sys.stderr,
    )


def embed_corpus_local(
    artifact: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    instruction: str | None = None,
    dim: int | None = None,
    max_batch_tokens: int = 16384,
    id_column: str = "id",
    text_column: str = "text",
    device: str = "auto",
    batch_size: int = 256,
    chunk_rows: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
) -> EmbedSummary:
    """Embed every record of `input` into `output` (.npy or .parquet), resumably."""
    start = time.perf_counter()
    artifact, input, output = Path(artifact), Path(input), Path(output)
    input_format(input)
    out_fmt = output_format(output)
    if chunk_rows < 1:
        raise CorpusError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    parts_dir = parts_dir_for(output)
    if output.exists() and not parts_dir.exists() and not overwrite:
        raise CorpusError(f"output {str(output)!r} exists: pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise CorpusError(f"output folder {str(output.parent)!r} does not exist")

    embedder = Embedder(artifact, device=device, max_batch_tokens=max_batch_tokens)
    embedder._check_dim(dim)  # fail before reading the corpus
    ids = scan_ids(input, id_column, text_column)
    fp = fingerprint(
        artifact,
        input,
        output,
        instruction=instruction,
        dim=dim,
        id_column=id_column,
        text_column=text_column,
    )
    out_dim = dim or embedder.dim

    with PartStore(parts_dir, fp) as store:
        done = set(store.committed_ids())
        unknown = done.difference(ids)
        if unknown:
            raise CorpusError(f"{parts_dir} holds ids not in the input, e.g. {min(unknown)!r}")
        if done:
            log.info(
                "resuming: %d of %d rows already committed in %s", len(done), len(ids), parts_dir
            )
        pending_ids: deque[list[str]] = deque()

        def chunks() -> Iterator[list[str]]:  # runs in the tokenising thread
            batch_ids: list[str] = []
            batch_texts: list[str] = []
            for rid, text in iter_records(input, id_column, text_column):
                if rid in done:
                    continue
                batch_ids.append(rid)
                batch_texts.append(text)
                if len(batch_ids) == chunk_rows:
                    pending_ids.append(batch_ids)
                    yield batch_texts
                    batch_ids, batch_texts = [], []
            if batch_ids:
                pending_ids.append(batch_ids)
                yield batch_texts

        seq = store.next_seq()
        with _progress(len(ids), len(done), progress) as bar:
            for vectors in embedder.embed_chunks(
                chunks(), instruction=instruction, dim=dim, batch_size=batch_size
            ):
                chunk_ids = pending_ids.popleft()
                store.commit(seq, chunk_ids, vectors)
                seq += 1
                bar.update(len(chunk_ids))

        _merge(store, ids, output, out_fmt, out_dim)
        resumed = len(done)
    store.remove()
    return EmbedSummary(len(ids), resumed, out_dim, time.perf_counter() - start, output)


def _merge(store: PartStore, ids: list[str], output: Path, fmt: str, dim: int) -> None:
    """Check exactly-once coverage, then write OUTPUT in input order."""
    committed = store.committed_ids()
    if len(committed) != len(set(committed)):
        raise CorpusError(f"{store.folder}: a row was committed twice; delete it and rerun")
    if set(committed) != set(ids):
        missing = len(set(ids) - set(committed))
        raise CorpusError(f"{store.folder}: {missing} input rows have no vectors")
    in_order = committed == ids
    if fmt == "npy":
        position = None if in_order else {rid: i for i, rid in enumerate(ids)}

        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            row = 0
            for part_ids, vectors in store.parts():
                if position is None:
                    yield row, vectors
                else:
                    for rid, vec in zip(part_ids, vectors, strict=True):
                        yield position[rid], vec[None]
                row += len(part_ids)

        write_npy(output, len(ids), dim, blocks())
    elif in_order:
        write_parquet(output, store.parts())
    else:  # parts out of input order: reorder in memory
        vec_by_id = {
            rid: vec for part_ids, v in store.parts() for rid, vec in zip(part_ids, v, strict=True)
        }
        write_parquet(output, iter([(ids, np.stack([vec_by_id[i] for i in ids]))]))
