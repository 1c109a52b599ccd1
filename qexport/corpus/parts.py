"""The sidecar folder `OUTPUT.parts/` that makes `qexport embed` resumable and exactly-once.

- `state.json` holds the job's fingerprint (artifact, input, and every argument that changes
  the vectors); a restart with a different fingerprint is refused, and so is a folder that
  holds parts but no `state.json` (parts of an unknown job are never mixed into OUTPUT).
- Each committed chunk is one `part-NNNNNN.npz`: the ids as one UTF-8 byte string plus int64
  offsets (variable length: a 20 KB id costs 20 KB, and any string a JSON string can hold,
  NUL included, comes back unchanged) and the float32 vectors. A part is written to a temp
  name, fsynced and renamed: it exists completely or not at all, so a kill at any moment loses
  at most the chunk in flight. A part that cannot be read (damaged on disk) is refused by name.
- A lock file keeps two runs from writing the same output at once.
On restart the ids in the committed parts are skipped; at the end the parts are merged into
OUTPUT (atomically), then the folder is renamed to `.OUTPUT.parts.done-PID` and removed (a kill
during the removal leaves that name, which the next run removes: see `output.remove_stale`).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from .io import CorpusError

STATE = "state.json"
LOCK = "lock"
STATE_VERSION = 2  # 1: ids as fixed-width numpy unicode (trailing NULs lost); still read

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def done_dir_for(output: Path) -> Path:
    """Where a finished parts folder is moved before it is removed (see `remove`)."""
    return output.with_name(f".{output.name}.parts.done-{os.getpid()}")


def encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ids -> (UTF-8 bytes as uint8, int64 offsets [n + 1]): variable length, NUL-safe."""
    encoded = [i.encode("utf-8") for i in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def decode_ids(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in pairwise(offsets.tolist())]


class PartStore:
    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.created = False  # this run made the folder (nothing to resume)
        self._lock_fh: Any = None

    def open(self) -> PartStore:
        """Create or reopen the folder; lock it; check the fingerprint; drop stale temp files."""
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.folder / LOCK, "w")  # held while the run lasts
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self._lock_fh.close()
                raise CorpusError(
                    f"another qexport embed is writing {self.folder} right now"
                ) from exc
        for stale in self.folder.glob("*.tmp"):  # a kill between write and rename
            stale.unlink()
        state_path = self.folder / STATE
        if state_path.is_file():
            try:
                old = json.loads(state_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise self._unknown(f"its {STATE} is unreadable") from exc
            self._compare(old.get("fingerprint", {}))
        elif self.part_paths():
            raise self._unknown(f"it holds parts but no {STATE}")
        else:  # new, or killed before the state was written: nothing to lose
            self._write_json(
                state_path, {"version": STATE_VERSION, "fingerprint": self.fingerprint}
            )
        return self

    def _unknown(self, why: str) -> CorpusError:
        self.close()
        return CorpusError(f"{self.folder} is not a resumable run ({why}): delete it to start over")

    def _compare(self, old: dict[str, Any]) -> None:
        diffs = [
            f"{key}: {old.get(key)!r} then, {self.fingerprint.get(key)!r} now"
            for key in sorted(set(old) | set(self.fingerprint))
            if old.get(key) != self.fingerprint.get(key)
        ]
        if diffs:
            self.close()
            raise CorpusError(
                f"{self.folder} holds an interrupted run with different arguments or files "
                f"({'; '.join(diffs)}): rerun with the same ones, or delete {self.folder} to "
                "start over"
            )

    def close(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> PartStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def part_paths(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz"))

    def _load(self, path: Path, vectors: bool) -> tuple[list[str], np.ndarray | None]:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "id_offsets" in data:
                    ids = decode_ids(data["ids_utf8"], data["id_offsets"])
                else:  # written by STATE_VERSION 1
                    ids = data["ids"].tolist()
                vecs = data["embeddings"] if vectors else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CorpusError(
                f"{path} cannot be read ({type(exc).__name__}: {exc}); delete that file "
                "(its rows are computed again) and rerun"
            ) from exc
        if vecs is not None and (vecs.ndim != 2 or len(vecs) != len(ids)):
            raise CorpusError(f"{path}: {len(ids)} ids but vectors of shape {vecs.shape}")
        return ids, vecs

    def parts(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, vectors) of each committed part, in commit order."""
        for path in self.part_paths():
            ids, vectors = self._load(path, vectors=True)
            assert vectors is not None
            yield ids, vectors

    def committed_ids(self) -> list[str]:
        ids: list[str] = []
        for path in self.part_paths():
            ids.extend(self._load(path, vectors=False)[0])
        return ids

    def commit(self, seq: int, ids: list[str], vectors: np.ndarray) -> Path:
        """Write one part atomically: temp file, fsync, rename."""
        final = self.folder / f"part-{seq:06d}.npz"
        if final.exists():
            raise CorpusError(f"{final} already exists: refusing to overwrite a committed part")
        tmp = final.with_name(final.name + ".tmp")
        blob, offsets = encode_ids(ids)
        with open(tmp, "wb") as fh:
            np.savez(fh, ids_utf8=blob, id_offsets=offsets, embeddings=vectors.astype(np.float32))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def next_seq(self) -> int:
        paths = self.part_paths()
        return int(paths[-1].stem.split("-")[1]) + 1 if paths else 0

    def remove(self, done: Path) -> None:
        """Move the folder out of the way in one rename, then delete it: a kill during the
        deletion leaves `done` (recognised by the next run), never a half-deleted parts
        folder that would look like an interrupted run."""
        self.close()
        os.replace(self.folder, done)
        shutil.rmtree(done)
