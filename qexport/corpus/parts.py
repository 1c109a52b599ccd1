"""The sidecar folder `OUTPUT.parts/` that makes `qexport embed` resumable and exactly-once.

- `state.json` holds the job's fingerprint (artifact, input, and every argument that changes
  the vectors); a restart with a different fingerprint is refused.
- Each committed chunk is one `part-NNNNNN.npz` (ids + float32 vectors), written to a temp
  name, fsynced and renamed: a part exists completely or not at all, so a kill at any moment
  loses at most the chunk in flight and never leaves half a part behind.
- A lock file keeps two runs from writing the same output at once.
On restart the ids in the committed parts are skipped; at the end the parts are merged into
OUTPUT (atomically) and the folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .io import CorpusError

STATE = "state.json"
LOCK = "lock"
STATE_VERSION = 1

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


class PartStore:
    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self._lock_fh: Any = None

    def open(self) -> PartStore:
        """Create or reopen the folder; lock it; check the fingerprint; drop stale temp files."""
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
        state_path = self.folder / STATE
        if state_path.is_file():
            old = json.loads(state_path.read_text(encoding="utf-8"))
            self._compare(old.get("fingerprint", {}))
        else:
            self._write_json(
                state_path, {"version": STATE_VERSION, "fingerprint": self.fingerprint}
            )
        for stale in self.folder.glob("*.tmp"):
            stale.unlink()
        return self

    def _compare(self, old: dict[str, Any]) -> None:
        diffs = [
            f"{key}: {old.get(key)!r} then, {self.fingerprint.get(key)!r} now"
            for key in sorted(set(old) | set(self.fingerprint))
            if old.get(key) != self.fingerprint.get(key)
        ]
        if diffs:
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

    def parts(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, vectors) of each committed part, in commit order."""
        for path in self.part_paths():
            with np.load(path, allow_pickle=False) as data:
                yield data["ids"].tolist(), data["embeddings"]

    def committed_ids(self) -> list[str]:
        ids: list[str] = []
        for path in self.part_paths():
            with np.load(path, allow_pickle=False) as data:
                ids.extend(data["ids"].tolist())
        return ids

    def commit(self, seq: int, ids: list[str], vectors: np.ndarray) -> Path:
        """Write one part atomically: temp file, fsync, rename."""
        final = self.folder / f"part-{seq:06d}.npz"
        if final.exists():
            raise CorpusError(f"{final} already exists: refusing to overwrite a committed part")
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=str), embeddings=vectors.astype(np.float32))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def next_seq(self) -> int:
        paths = self.part_paths()
        return int(paths[-1].stem.split("-")[1]) + 1 if paths else 0

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder)
