"""What checksum verification and the text checks cost, to decide the defaults.

    flock /tmp/qexport-heavy.lock python bench/bench_verify.py [--artifact DIR]

* sha256 of every file of an artifact (`load_manifest(verify=True)` minus the parse), with the
  files in the page cache (warm) and dropped from it first (cold: posix_fadvise DONTNEED), in
  seconds per GB;
* `Embedder(...)` load time with verify off and on (warm cache), the same artifact;
* `check_texts` (UTF-8 encodability, runtime/tokenize.py) vs tokenising the same texts.

Without --artifact, exports random:qwen3-embedding-0.6b cut to 8 layers in fp32 (~1.1 GB,
external data) to a temporary folder (removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import DATA

from qexport.manifest import load_manifest
from qexport.runtime import Embedder
from qexport.runtime.tokenize import check_texts
from qexport.util import sha256_file

SCIFACT = DATA / "scifact" / "corpus.jsonl"


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def hash_all(folder: Path, files: list[str], cold: bool) -> float:
    if cold:
        for name in files:
            drop_cache(folder / name)
    start = time.perf_counter()
    for name in files:
        sha256_file(folder / name)
    return time.perf_counter() - start


def best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = None
    if args.artifact is None:
        from qexport.export.api import ExportOptions, export_onnx

        tmp = tempfile.TemporaryDirectory(prefix="qexport-bench-verify-")
        folder = Path(tmp.name) / "art"
        export_onnx("random:qwen3-embedding-0.6b", folder, ExportOptions(progress=False, layers=8))
    else:
        folder = Path(args.artifact)
    manifest = load_manifest(folder)
    files = list(manifest.files)
    gb = sum((folder / f).stat().st_size for f in files) / 1e9
    warm = best(lambda: hash_all(folder, files, cold=False), args.repeats)
    cold = best(lambda: hash_all(folder, files, cold=True), args.repeats)
    hash_all(folder, files, cold=False)  # back in the cache for the load timings

    def load(verify: bool) -> float:
        start = time.perf_counter()
        Embedder(folder, device="cpu", verify=verify)
        return time.perf_counter() - start

    load_off = best(lambda: load(False), args.repeats)
    load_on = best(lambda: load(True), args.repeats)

    texts = [json.loads(line)["text"] for line in SCIFACT.read_text().splitlines()[:5000]]
    emb = Embedder(folder, device="cpu")
    non_ascii = sum(not t.isascii() for t in texts)
    chars = sum(map(len, texts))
    check_s = statistics.median(timed(lambda: check_texts(texts)) for _ in range(5))
    tok_s = timed(lambda: emb.encoder.encode(texts, warn=False))
    encode_all_s = statistics.median(  # the worst case: every text non-ASCII, encoded once
        timed(lambda: [t.encode("utf-8") for t in texts]) for _ in range(5)
    )

    print(f"artifact: {folder} ({gb:.2f} GB in {len(files)} files, {os.cpu_count()} CPUs)")
    print(f"sha256 warm: {warm:.2f} s = {warm / gb:.2f} s/GB ({gb / warm:.2f} GB/s)")
    print(f"sha256 cold: {cold:.2f} s = {cold / gb:.2f} s/GB ({gb / cold:.2f} GB/s)")
    print(
        f"Embedder load, warm cache: verify off {load_off:.2f} s, on {load_on:.2f} s "
        f"(+{load_on - load_off:.2f} s, {load_on / load_off:.2f}x)"
    )
    print(
        f"text check on {len(texts)} SciFact documents ({chars / 1e6:.1f} M chars, "
        f"{non_ascii} non-ASCII): {check_s * 1e3:.2f} ms; encode every text to UTF-8 "
        f"{encode_all_s * 1e3:.2f} ms; tokenising them {tok_s * 1e3:.0f} ms "
        f"({check_s / tok_s:.2%})"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
