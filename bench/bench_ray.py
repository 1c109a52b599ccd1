"""The Ray engine's overhead: rows/s of `qexport embed` with the local engine vs `--engine ray`
on this machine, for the same corpus and artifact.

    python bench/bench_ray.py [--artifact DIR] [--docs N] [--repeats 3] [--actors 1 2]

Corpus: SciFact documents (`title + " " + text`, from ../shared/data/scifact) written once to
a parquet file (id, text); without ../shared, --synthetic N short texts. Artifact: the
random:qwen3-tiny export unless --artifact is given (a tiny model shows the overhead at its
largest: the per-row work is small). Each engine gets one warm-up run, then --repeats timed
runs (fresh output each); median seconds reported. The Ray runs share one local Ray started
once (sized as the engine sizes it: cores + the CPUs Ray Data's operators hold); each run
still starts its actors (artifact load) and is timed end to end; Ray's own start-up is
reported apart. Peak memory: the largest sum of RSS over this process and all its
descendants (Ray's raylet, GCS and workers) during a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from common import DATA


class PeakTreeRSS:
    """Peak of the summed RSS of this process and its descendants, sampled every 50 ms."""

    def __init__(self) -> None:
        self.root = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> int:
        total = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakTreeRSS:
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def write_corpus(path: Path, docs: int, synthetic: int | None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    scifact = DATA / "scifact" / "corpus.jsonl"
    if synthetic is None and scifact.exists():
        rows = [json.loads(line) for line in scifact.read_text().splitlines() if line.strip()]
        rows = rows[:docs]
        ids = [r["_id"] for r in rows]
        texts = [(r["title"] + " " + r["text"]).strip() for r in rows]
    else:
        n = synthetic or docs
        words = "river stone quiet lamp orbit maple signal harbor velvet ember".split()
        ids = [f"doc-{i}" for i in range(n)]
        texts = [" ".join(words[(i * 7 + j * 3) % 10] for j in range(1 + i % 9)) for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return len(ids)


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], int]:
    fn()  # warm-up
    seconds, peak = [], 0
    for _ in range(repeats):
        with PeakTreeRSS() as mem:
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak)
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=None, help="artifact folder (default: qwen3-tiny)")
    ap.add_argument("--docs", type=int, default=5183, help="SciFact documents (all: 5183)")
    ap.add_argument("--synthetic", type=int, default=None, help="N synthetic short texts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=1024, help="rows per Ray batch")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import ray

    from qexport.corpus.local import embed_corpus_local
    from qexport.corpus.ray_engine import embed_corpus_ray, local_cpus

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        artifact = args.artifact
        if artifact is None:
            from qexport.export.api import ExportOptions, export_onnx

            artifact = str(work / "tiny")
            export_onnx("random:qwen3-tiny", artifact, ExportOptions(progress=False))
        corpus = work / "corpus.parquet"
        rows = write_corpus(corpus, args.docs, args.synthetic)
        results: dict[str, dict[str, float]] = {}

        def local() -> None:
            embed_corpus_local(
                artifact, corpus, work / "local.parquet", device="cpu", overwrite=True,
                progress=False,
            )  # fmt: skip

        secs, peak = timed(local, args.repeats)
        results["local"] = {"seconds": statistics.median(secs), "peak_rss_mib": peak / 2**20}

        t0 = time.perf_counter()
        ray.init(num_cpus=local_cpus(), include_dashboard=False, logging_level="WARNING")
        ray_start = time.perf_counter() - t0
        for actors in args.actors:
            run = {"n": 0}

            def on_ray(actors: int = actors, run: dict[str, int] = run) -> None:
                run["n"] += 1
                out = work / f"ray-{actors}-{run['n']}"
                summary = embed_corpus_ray(
                    artifact=artifact, input=corpus, output=out, actors=str(actors),
                    batch_size=args.batch_size,
                )  # fmt: skip
                assert summary.written == rows, summary
                shutil.rmtree(out)
                shutil.rmtree(str(summary.checkpoint_dir))

            secs, peak = timed(on_ray, args.repeats)
            results[f"ray, {actors} actor(s)"] = {
                "seconds": statistics.median(secs),
                "peak_rss_mib": peak / 2**20,
            }
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results["local"]["seconds"]
    print(f"corpus: {rows} rows; artifact: {artifact}; cores: {os.cpu_count()}")
    print(f"ray.init (local cluster start): {ray_start:.1f} s")
    print("| engine | median s | rows/s | vs local | peak RSS (MiB, all processes) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['seconds']:.1f} | {rows / r['seconds']:.0f} | "
            f"{base / r['seconds']:.2f}x | {r['peak_rss_mib']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "ray_init_s": ray_start, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
