"""Speed and memory, one harness for every task: the artifact and its PyTorch reference over a
grid of batch sizes and lengths, each engine in its own subprocess (so peak host memory
belongs to one engine only), on CUDA where the artifact's precision and the machine allow
(`device="auto"`; the report names the onnxruntime providers and the reference device that
were actually used), on CPU otherwise.

Per grid cell (batch size B, length L): B rows of token ids of about L tokens, built once with
the artifact's own tokeniser (embed: different real-sentence texts; rerank: one query with
different real-sentence documents, in the manifest's prompt). Both engines run the same rows:
the artifact through the runtime's row loop (`runtime.core.RowRunner`: plan, pad, run, check),
the reference padded its own way (the card recipes pad left) through its model, so that
tokenisation is timed on neither side. `warmup` untimed calls, then `repeats` timed calls;
latency p50/p95 over the repeats, tokens/s and rows/s from the median. The reranker's
reference is the card recipe with `logits_to_keep=1` (the same scores; the card's full
[batch, seq, vocab] logits would dominate time and memory at these sizes, so the baseline is
the stronger one). Peak RSS per length: the process high-water mark (VmHWM), reset before the
first cell of each length (Linux /proc/self/clear_refs; elsewhere the mark since start, cells
in increasing length). On CUDA, peak GPU memory per length (torch: max_memory_allocated;
onnxruntime: NVML per-process usage, sampled) and MFU.

Run as a module, it is the worker: `python -m qexport.validate.speed CONFIG.json`, one JSON
event per stdout line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..memory import GpuMemory, peak_rss_mb, reset_peak_rss
from ..tasks import get_task
from .flops import flops_per_token, gpu_peak_flops, matmul_flops_per_token
from .rows import DEFAULT_LENGTHS, grid_cells

ENGINES = ("onnxruntime", "pytorch")
# an extra engine for rerankers (bench/): the card recipe literally, full [batch, seq, vocab]
# logits; "pytorch" is the same recipe with logits_to_keep=1
CARD_ENGINE = "pytorch-card"
CPU_ONLY = ("int8-dynamic",)  # DynamicQuantizeMatMul has no CUDA kernel


def speed_device(device: str, precision: str) -> tuple[str, str | None]:
    """The device the artifact's engine is asked for: the requested one, except that a
    CPU-only precision runs on CPU. Returns (device, note)."""
    if device != "cpu" and precision in CPU_ONLY:
        return "cpu", f"{precision} has no CUDA kernels: the speed grid ran on CPU"
    return device, None


# ----------------------------------------------------------------------------- worker


class _TorchPeak:
    """Peak CUDA memory of torch in this process (bytes)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def reset(self) -> None:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()

    def close(self) -> None:
        pass

    def read(self) -> int:
        self.torch.cuda.synchronize()
        return int(self.torch.cuda.max_memory_allocated())


def _load_onnxruntime(cfg: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    from .. import runtime

    device = cfg["device"]
    info: dict[str, Any] = {}
    gpu: Any = None
    if device in ("cuda", "auto"):
        # before the session, so that the reading includes weights and CUDA context (NVML
        # cannot list this process yet: it reads the device minus this baseline)
        try:
            gpu = GpuMemory()
        except Exception as exc:  # no pynvml / NVML: report why
            info["gpu_memory_note"] = f"NVML unavailable ({exc})"
    engine = getattr(runtime, get_task(cfg["task"]).runtime_class)(cfg["artifact"], device=device)
    core = engine.core  # the runtime's one row loop
    info["providers"] = engine.providers
    if engine.providers[0] != "CUDAExecutionProvider":  # "auto" fell back to the CPU
        info.pop("gpu_memory_note", None)
        if gpu is not None:
            gpu.close()
            gpu = None
    if gpu is not None:
        info["gpu_memory_source"] = gpu.source
    return (lambda rows, b: core.run(rows, batch_size=b)), gpu, info


def _load_pytorch(cfg: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    from .parity import load_reference, torch_device

    if cfg["task"] == "rerank":
        from .rerank_reference import CardReranker

        ref_device, note = torch_device(cfg["device"])
        ref: Any = CardReranker(
            cfg["reference"],
            max_length=cfg["max_length"],
            device=ref_device,
            last_logits_only=cfg["engine"] != CARD_ENGINE,
        )
        run = ref.logodds_ids
    else:
        ref, ref_device, note = load_reference(cfg["reference"], cfg["artifact"], cfg["device"])
        run = ref.embed_ids
    info: dict[str, Any] = {"device": ref_device, "dtype": "fp32"}
    if note:
        info["note"] = note
    gpu = _TorchPeak() if ref_device == "cuda" else None
    return (lambda rows, b: run(rows, batch_size=b)), gpu, info


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def worker(cfg: dict[str, Any]) -> None:
    rss0 = peak_rss_mb()
    load = _load_onnxruntime if cfg["engine"] == "onnxruntime" else _load_pytorch
    run, gpu, info = load(cfg)
    _emit({"event": "loaded", "rss_peak_mb": peak_rss_mb(), "rss_before_load_mb": rss0, **info})
    per_length = True
    for i, cell in enumerate(cfg["cells"]):
        rows, b = cell["rows"], cell["batch_size"]
        if cell.get("first_of_length"):
            per_length = reset_peak_rss() and per_length
            if gpu is not None:
                gpu.reset()
        for _ in range(cfg["warmup"]):
            run(rows, b)
        times = []
        for _ in range(cfg["repeats"]):
            t0 = time.perf_counter()
            out = run(rows, b)
            times.append(time.perf_counter() - t0)
        if not np.isfinite(out).all():
            raise FloatingPointError("non-finite output during the speed run")
        if cfg.get("outputs"):  # the last timed call's output, for comparisons (bench/)
            np.save(Path(cfg["outputs"]) / f"{i}.npy", np.asarray(out))
        gpu_peak = None if gpu is None else gpu.read()
        _emit(
            {
                "event": "cell",
                "batch_size": b,
                "length": cell["length"],
                "tokens": cell["tokens"],
                "rows": len(rows),
                "latencies_s": times,
                "rss_peak_mb": peak_rss_mb(),
                "gpu_peak_mb": None if gpu_peak is None else gpu_peak / 2**20,
            }
        )
    if gpu is not None:
        gpu.close()
    _emit({"event": "done", "rss_peak_per_length": per_length})


# ----------------------------------------------------------------------------- parent


def _summarise(cell: dict[str, Any]) -> dict[str, Any]:
    lat = np.array(cell["latencies_s"])
    p50 = float(np.median(lat))
    return {
        "batch_size": cell["batch_size"],
        "length": cell["length"],
        "tokens": cell["tokens"],
        "latency_p50_ms": p50 * 1e3,
        "latency_p95_ms": float(np.percentile(lat, 95)) * 1e3,
        "tokens_per_s": cell["tokens"] / p50,
        "rows": cell["rows"],
        "rows_per_s": cell["rows"] / p50,
        "rss_peak_mb": cell["rss_peak_mb"],
        "gpu_peak_mb": cell["gpu_peak_mb"],
        "repeats": len(lat),
    }


def _run_engine(cfg: dict[str, Any], progress: Any) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(cfg, fh)
        path = fh.name
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qexport.validate.speed", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        events = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            events.append(event)
            if event["event"] == "cell":
                progress.update(1)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.wait() != 0 or not events or events[-1]["event"] != "done":
            tail = stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"speed run of {cfg['engine']} failed: {tail[0]}")
    finally:
        os.unlink(path)
    loaded = events[0]
    load = {k: v for k, v in loaded.items() if k != "event"}
    load["rss_peak_per_length"] = events[-1].get("rss_peak_per_length", False)
    return {
        "load": load,
        "cells": [_summarise(e) for e in events if e["event"] == "cell"],
    }


def run_speed(
    artifact: str | Path,
    reference: str,
    *,
    device: str = "auto",
    batch_sizes: list[int] | tuple[int, ...] = (1, 8, 32),
    lengths: list[int] | tuple[int, ...] | None = None,
    repeats: int = 5,
    warmup: int = 1,
    pool: list[str] | None = None,
    engines: tuple[str, ...] = ENGINES,
    progress: bool = False,
    gpu_name: str | None = None,
    encoder: Any = None,
) -> dict[str, Any]:
    """Both engines over the grid, for the artifact's task; returns json-ready results with
    per-cell speedups. `reference` is what the suite's reference is built from (a reranker's
    checkpoint folder, hub id or random:<name>); `encoder` the runtime's tokeniser (opened
    from the artifact when None)."""
    from tqdm.auto import tqdm

    from .. import runtime
    from ..manifest import load_manifest
    from ..texts import BUILTIN_TEXTS

    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    task = get_task(manifest.task)
    if repeats < 1 or warmup < 0:
        raise ValueError("speed: repeats must be >= 1 and warmup >= 0")
    batch_sizes = sorted(set(batch_sizes))
    device, note = speed_device(device, manifest.precision)
    if encoder is None:
        encoder = getattr(runtime, task.runtime_class)(artifact, device=device).encoder
    pool = pool or BUILTIN_TEXTS
    lengths, cells, notes = grid_cells(
        task.name,
        encoder,
        pool,
        sorted(set(lengths or DEFAULT_LENGTHS[task.name])),
        batch_sizes,
        manifest.max_length,
    )
    notes += [note] if note else []
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        if task.name == "rerank" and not Path(reference).is_dir():
            from .checks_rerank import reference_folder

            reference = str(reference_folder(reference, artifact, manifest, stack))
        base = {
            "task": task.name,
            "artifact": str(artifact),
            "reference": reference,
            "device": device,
            "cells": cells,
            "repeats": repeats,
            "warmup": warmup,
            "max_length": manifest.max_length,
        }
        with tqdm(
            total=len(cells) * len(engines), desc="speed", disable=not progress, leave=False
        ) as bar:
            for engine in engines:
                results[engine] = _run_engine({**base, "engine": engine}, bar)
    providers = results.get("onnxruntime", {}).get("load", {}).get("providers", [])
    on_cuda = bool(providers) and providers[0] == "CUDAExecutionProvider"
    peak = gpu_peak_flops(gpu_name, manifest.precision) if on_cuda else None
    return {
        "task": task.name,
        "unit": task.unit,
        "device": device,
        "providers": providers,
        "batch_sizes": batch_sizes,
        "lengths": lengths,
        "repeats": repeats,
        "warmup": warmup,
        "texts": "built-in sentences" if pool is BUILTIN_TEXTS else "--texts",
        "engines": {e: results[e]["load"] for e in engines},
        "grid": _grid(artifact, manifest, cells, engines, results, peak),
        "gpu_peak_flops": peak,
        "mfu_note": None if peak else "MFU is computed on CUDA for known GPUs only",
        "notes": notes,
    }


def _grid(
    artifact: Path,
    manifest: Any,
    cells: list[dict[str, Any]],
    engines: tuple[str, ...],
    results: dict[str, Any],
    peak: float | None,
) -> list[dict[str, Any]]:
    """One row per cell: each engine's numbers, the speedup, FLOPs per token, MFU."""
    dense = matmul_flops_per_token(artifact / manifest.graph_file)
    grid = []
    for i, cell in enumerate(cells):
        row: dict[str, Any] = {"batch_size": cell["batch_size"], "length": cell["length"]}
        for engine in engines:
            row[engine] = results[engine]["cells"][i]
        if len(engines) == 2:
            a, r = (row[e]["tokens_per_s"] for e in engines)
            row["speedup"] = a / r
        mean_len = cell["tokens"] / cell["batch_size"]
        fpt = flops_per_token(dense, manifest.architecture, int(mean_len))
        row["gflop_per_token"] = fpt / 1e9
        if peak:
            for engine in engines:
                row[engine]["mfu"] = fpt * row[engine]["tokens_per_s"] / peak
        grid.append(row)
    return grid


def measure_rows(
    engine: str,
    artifact: str | Path,
    reference: str | Path,
    rows: list[list[int]],
    *,
    batch_size: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """One engine (`ENGINES`, or `CARD_ENGINE` for a reranker) alone in its own process over
    given token rows (batches of `batch_size`): the cell's numbers, its load (peak RSS after
    load, providers or device) and the last timed call's output ("outputs", numpy)."""
    from ..manifest import load_manifest

    manifest = load_manifest(artifact)
    cell = {
        "batch_size": batch_size,
        "length": max(len(r) for r in rows),
        "rows": rows,
        "tokens": int(sum(len(r) for r in rows)),
        "first_of_length": True,
    }
    with tempfile.TemporaryDirectory(prefix="qexport-speed.") as tmp:
        cfg = {
            "task": manifest.task,
            "engine": engine,
            "artifact": str(artifact),
            "reference": str(reference),
            "device": device,
            "cells": [cell],
            "repeats": repeats,
            "warmup": warmup,
            "max_length": manifest.max_length,
            "outputs": tmp,
        }
        from tqdm.auto import tqdm

        with tqdm(total=1, disable=True) as bar:
            got = _run_engine(cfg, bar)
        outputs = np.load(Path(tmp) / "0.npy")
    return {**got["cells"][0], "load": got["load"], "outputs": outputs}


if __name__ == "__main__":
    worker(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
