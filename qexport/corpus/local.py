"""The in-process engine behind `qexport embed`: resumable and exactly-once.

1. Check the paths (OUTPUT a file name, not a folder), remove what a killed run on OUTPUT
   left (`output.remove_stale`), load the artifact (checksums verified unless verify=False), scan
   the input (every record valid and encodable, ids unique) before any work.
2. Open `OUTPUT.parts/` (lock, fingerprint), skip the ids already committed there.
3. Stream the remaining records in chunks through `Embedder.embed_chunks` (the next chunk is
   read and tokenised while the current one runs) and commit each chunk as one part.
4. Check that the parts hold every input id exactly once, merge them into OUTPUT in input
   order (atomic rename), remove the parts folder.

After a kill or a deletion, the states a rerun can meet (each has a test in
tests/corpus/test_local_recovery.py):
- parts folder without OUTPUT: resume from the parts;
- parts folder complete and OUTPUT present (killed between the merge and the removal): OUTPUT
  is checked against the parts; equal -> finish, else exit 2 (unless --overwrite);
- OUTPUT without parts folder: a finished run; refused without --overwrite;
- a part deleted: its rows are computed again; a part damaged: exit 2 naming it;
- parts but no state.json: exit 2 (parts of an unknown job are never merged);
- temp files (`*.tmp` in the parts folder, `.OUTPUT.tmp-PID`, `.OUTPUT.parts.done-PID`):
  removed (the last two only when process PID is gone).
A run that fails before committing any part removes the parts folder it created.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import MANIFEST_NAME
from ..runtime import Embedder
from ..util import sha256_file
from .io import (
    CorpusError,
    check_output_not_input,
    input_format,
    iter_records,
    pyarrow_modules,
    scan_ids,
)
from .output import EmbedSummary, output_format, remove_stale, write_npy, write_parquet
from .parts import PartStore, done_dir_for, parts_dir_for

log = logging.getLogger("qexport")
MERGE_ROWS = 4096  # rows per parquet row group when the merge reorders


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
        "artifact_manifest_sha256": sha256_file(artifact / MANIFEST_NAME),
        "input": str(input.resolve()),
        "input_sha256": sha256_file(input),
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
    max_batch_tokens: int | None = None,
    id_column: str = "id",
    text_column: str = "text",
    device: str = "auto",
    batch_size: int = 256,
    chunk_rows: int = 1024,
    overwrite: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> EmbedSummary:
    """Embed every record of `input` into `output` (.npy or .parquet), resumably.

    `verify` checks the artifact's sha256 checksums before loading it."""
    start = time.perf_counter()
    artifact, input, output = Path(artifact), Path(input), Path(output)
    input_format(input)
    out_fmt = output_format(output)  # refuses a folder
    check_output_not_input(input, output)
    if chunk_rows < 1:
        raise CorpusError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    if not output.parent.is_dir():
        raise CorpusError(f"output folder {str(output.parent)!r} does not exist")
    for path in remove_stale(output):
        log.info("removed %s, left by a killed run", path)
    parts_dir = parts_dir_for(output)
    if output.exists() and not parts_dir.exists() and not overwrite:
        raise CorpusError(f"output {str(output)!r} exists: pass --overwrite to replace it")

    embedder = Embedder(artifact, device=device, max_batch_tokens=max_batch_tokens, verify=verify)
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
    run = _Run(embedder, input, id_column, text_column, instruction, dim, batch_size, chunk_rows)

    store = PartStore(parts_dir, fp)
    with store:
        try:
            resumed = _embed_missing(store, run, ids, output, overwrite, progress)
        except BaseException:
            if store.created and not store.part_paths():  # nothing of this run to keep
                store.close()
                shutil.rmtree(parts_dir, ignore_errors=True)
            raise
        _finish(store, ids, output, out_fmt, out_dim, overwrite)
    store.remove(done_dir_for(output))
    seconds = time.perf_counter() - start
    return EmbedSummary(len(ids), len(ids) - resumed, resumed, out_dim, seconds, str(output))


class _Run:
    """What the embedding loop needs, in one place."""

    def __init__(
        self,
        embedder: Embedder,
        input: Path,
        id_column: str,
        text_column: str,
        instruction: str | None,
        dim: int | None,
        batch_size: int,
        chunk_rows: int,
    ) -> None:
        self.embedder, self.input = embedder, input
        self.id_column, self.text_column = id_column, text_column
        self.instruction, self.dim = instruction, dim
        self.batch_size, self.chunk_rows = batch_size, chunk_rows


def _embed_missing(
    store: PartStore, run: _Run, ids: list[str], output: Path, overwrite: bool, progress: bool
) -> int:
    """Embed the ids that no committed part holds, one part per chunk; return how many were
    committed before this run."""
    done = set(store.committed_ids())
    unknown = done.difference(ids)
    if unknown:
        raise CorpusError(f"{store.folder} holds ids not in the input, e.g. {min(unknown)!r}")
    if output.exists() and not overwrite and len(done) < len(ids):
        raise CorpusError(
            f"output {str(output)!r} exists but {store.folder} holds an unfinished run: "
            "pass --overwrite to replace the output, or move it away"
        )
    if done:
        log.info(
            "resuming: %d of %d rows already committed in %s", len(done), len(ids), store.folder
        )
    pending_ids: deque[list[str]] = deque()

    def chunks() -> Iterator[list[str]]:  # runs in the tokenising thread
        batch_ids: list[str] = []
        batch_texts: list[str] = []
        for rid, text in iter_records(run.input, run.id_column, run.text_column):
            if rid in done:
                continue
            batch_ids.append(rid)
            batch_texts.append(text)
            if len(batch_ids) == run.chunk_rows:
                pending_ids.append(batch_ids)
                yield batch_texts
                batch_ids, batch_texts = [], []
        if batch_ids:
            pending_ids.append(batch_ids)
            yield batch_texts

    seq = store.next_seq()
    with _progress(len(ids), len(done), progress) as bar:
        for vectors in run.embedder.embed_chunks(
            chunks(), instruction=run.instruction, dim=run.dim, batch_size=run.batch_size
        ):
            chunk_ids = pending_ids.popleft()
            store.commit(seq, chunk_ids, vectors)
            seq += 1
            bar.update(len(chunk_ids))
    return len(done)


def _check_coverage(store: PartStore, ids: list[str]) -> list[str]:
    committed = store.committed_ids()
    if len(committed) != len(set(committed)):
        raise CorpusError(f"{store.folder}: a row was committed twice; delete it and rerun")
    if set(committed) != set(ids):
        missing = len(set(ids) - set(committed))
        raise CorpusError(f"{store.folder}: {missing} input rows have no vectors")
    return committed


def _finish(
    store: PartStore, ids: list[str], output: Path, fmt: str, dim: int, overwrite: bool
) -> None:
    """Check exactly-once coverage, then write OUTPUT in input order. An OUTPUT that exists
    here (without --overwrite) was found next to a complete parts folder: a kill between the
    merge and the removal. It is kept if it holds exactly what the merge would write."""
    committed = _check_coverage(store, ids)
    if output.exists() and not overwrite:
        if _output_matches(store, ids, output, fmt, dim):
            log.info("%s already holds the merged parts of %s", output, store.folder)
            return
        raise CorpusError(
            f"output {str(output)!r} exists and differs from the finished run in "
            f"{store.folder}: pass --overwrite to replace it, or move it away"
        )
    _merge(store, ids, committed, output, fmt, dim)


def _positions(store: PartStore, ids: list[str]) -> Iterator[tuple[list[int], np.ndarray]]:
    """(input positions, vectors) of each committed part."""
    position = {rid: i for i, rid in enumerate(ids)}
    for part_ids, vectors in store.parts():
        yield [position[rid] for rid in part_ids], vectors


def _output_matches(store: PartStore, ids: list[str], output: Path, fmt: str, dim: int) -> bool:
    try:
        if fmt == "npy":
            got = np.load(output, mmap_mode="r", allow_pickle=False)
            if got.dtype != np.float32 or got.shape != (len(ids), dim):
                return False
        else:
            table = pyarrow_modules()[1].read_table(output)
            if table.column("id").to_pylist() != ids:
                return False
            got = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    except (OSError, ValueError, KeyError):
        return False
    return all(np.array_equal(got[pos], vecs) for pos, vecs in _positions(store, ids))


def _merge(
    store: PartStore, ids: list[str], committed: list[str], output: Path, fmt: str, dim: int
) -> None:
    """Write OUTPUT in input order (temp file + atomic rename)."""
    in_order = committed == ids
    if fmt == "npy":

        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            if in_order:
                row = 0
                for part_ids, vectors in store.parts():
                    yield row, vectors
                    row += len(part_ids)
                return
            for pos, vectors in _positions(store, ids):
                for p, vec in zip(pos, vectors, strict=True):
                    yield p, vec[None]

        write_npy(output, len(ids), dim, blocks())
    elif in_order:
        write_parquet(output, store.parts())
    else:  # parts out of input order: reorder in memory, write in row groups
        ordered = np.empty((len(ids), dim), dtype=np.float32)
        for pos, vectors in _positions(store, ids):
            ordered[pos] = vectors
        write_parquet(
            output,
            (
                (ids[i : i + MERGE_ROWS], ordered[i : i + MERGE_ROWS])
                for i in range(0, len(ids), MERGE_ROWS)
            ),
        )
