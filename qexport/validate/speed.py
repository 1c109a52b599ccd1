"""Speed and memory: the artifact and the PyTorch reference over a grid of batch sizes and
lengths, each engine in its own subprocess (so peak host memory belongs to one engine only).

Per grid cell (batch size B, length L): B different real-sentence texts of about L tokens,
`warmup` untimed calls, then `repeats` timed calls of the engine's public embed(); latency
p50/p95 over the repeats, tokens/s = tokens in the batch / median latency. Peak RSS per
length: the process high-water mark (VmHWM), reset before the first cell of each length
(Linux /proc/self/clear_refs; elsewhere the mark since start, cells in increasing length). On CUDA, peak GPU memory per length
(torch: max_memory_allocated; onnxruntime: NVML per-process usage, sampled) and MFU.

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
from pathlib import Path
from typing import Any

import numpy as np

from ..memory import GpuMemory, peak_rss_mb, reset_peak_rss

ENGINES = ("onnxruntime", "pytorch")

# Dense peak FLOP/s by GPU name (tensor cores for 16-bit; fp32 without TF32)
GPU_PEAK_FLOPS = {
    "H200": {"fp16": 989e12, "bf16": 989e12, "fp32": 67e12},
    "H100": {"fp16": 989e12, "bf16": 989e12, "fp32": 67e12},
    "A100": {"fp16": 312e12, "bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"fp16": 362e12, "bf16": 362e12, "fp32": 91.6e12},
    "L4": {"fp16": 121e12, "bf16": 121e12, "fp32": 30.3e12},
}


def make_texts(
    count_tokens: Any, pool: list[str], length: int, n: int, offset: int = 0
) -> list[str]:
    """n different texts of at most `length` tokens (as close as whole words allow), cut from
    the running stream of the real sentences in `pool`. count_tokens(list[str]) -> list[int]."""
    words = " ".join(t for t in pool if t.strip()).split()
    if not words:
        raise ValueError("no words in the text pool")
    while len(words) < 4 * length + 64 * n:
        words = words + words
    out = []
    for j in range(n):
        start = (offset + 97 * j) % len(words)
        stream = words[start:] + words[:start]
        lo, hi = 1, min(len(stream), 4 * length)
        while lo < hi:  # the most words whose text fits in `length` tokens
            mid = (lo + hi + 1) // 2
            if count_tokens([" ".join(stream[:mid])])[0] <= length:
                lo = mid
            else:
                hi = mid - 1
        out.append(" ".join(stream[:lo]))
    return out


def matmul_flops_per_token(graph: Path) -> float:
    """2 x the weights of every MatMul/Gemm/MatMulNBits with a constant weight (FLOPs of the
    dense layers per token)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            total += attrs.get("K", 0) * attrs.get("N", 0)
        elif node.op_type in ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul"):
            if len(node.input) > 1 and node.input[1] in inits:
                total += int(np.prod(inits[node.input[1]]))
    return 2.0 * total


def flops_per_token(dense: float, architecture: dict[str, Any], length: int) -> float:
    """Dense layers plus attention scores and values: 4 x L x (heads x head_dim) per layer."""
    layers = architecture.get("layers_exported", architecture.get("num_hidden_layers", 0))
    heads = architecture.get("num_attention_heads", 0)
    head_dim = architecture.get("head_dim") or (architecture.get("hidden_size", 0) // max(heads, 1))
    return dense + 4.0 * length * heads * head_dim * layers


def gpu_peak_flops(gpu_name: str | None, precision: str) -> float | None:
    if not gpu_name:
        return None
    for key, peaks in GPU_PEAK_FLOPS.items():
        if key in gpu_name:
            return peaks.get("fp32" if precision == "fp32" else "fp16")
    return None


# ----------------------------------------------------------------------------- worker


def _load(cfg: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """(embed(texts, batch_size) callable, gpu peak reader, info)."""
    device = cfg["device"]
    if cfg["engine"] == "onnxruntime":
        from ..runtime import Embedder

        info: dict[str, Any] = {}
        gpu: Any = None
        if device in ("cuda", "auto"):
            # before the session, so that the reading includes weights and CUDA context (NVML
            # cannot list this process yet: it reads the device minus this baseline)
            try:
                gpu = GpuMemory()
            except Exception as exc:  # no pynvml / NVML: report why
                info["gpu_memory_note"] = f"NVML unavailable ({exc})"
        emb = Embedder(cfg["artifact"], device=device)
        info["providers"] = emb.providers
        if emb.providers[0] != "CUDAExecutionProvider":  # "auto" fell back to the CPU
            info.pop("gpu_memory_note", None)
            if gpu is not None:
                gpu.close()
                gpu = None
        if gpu is not None:
            info["gpu_memory_source"] = gpu.source
        return (lambda texts, b: emb.embed(texts, batch_size=b)), gpu, info
    from .parity import load_reference

    ref, ref_device, note = load_reference(cfg["reference"], cfg["artifact"], device)
    info = {"device": ref_device, "dtype": "fp32"}
    if note:
        info["note"] = note
    gpu = None
    if ref_device == "cuda":
        import torch

        class _TorchPeak:
            peak = 0

            def reset(self) -> None:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

            def close(self) -> None:
                pass

            def read(self) -> int:
                torch.cuda.synchronize()
                return int(torch.cuda.max_memory_allocated())

        gpu = _TorchPeak()
    return (lambda texts, b: ref.embed(texts, batch_size=b)), gpu, info


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def worker(cfg: dict[str, Any]) -> None:
    rss0 = peak_rss_mb()
    embed, gpu, info = _load(cfg)
    _emit({"event": "loaded", "rss_peak_mb": peak_rss_mb(), "rss_before_load_mb": rss0, **info})
    per_length = True
    for cell in cfg["cells"]:
        texts, b = cell["texts"], cell["batch_size"]
        if cell.get("first_of_length"):
            per_length = reset_peak_rss() and per_length
            if gpu is not None:
                gpu.reset()
        for _ in range(cfg["warmup"]):
            embed(texts, b)
        times = []
        for _ in range(cfg["repeats"]):
            t0 = time.perf_counter()
            out = embed(texts, b)
            times.append(time.perf_counter() - t0)
        if not np.isfinite(out).all():
            raise FloatingPointError("non-finite output during the speed run")
        gpu_peak = None
        if gpu is not None:
            gpu_peak = gpu.read()
        _emit(
            {
                "event": "cell",
                "batch_size": b,
                "length": cell["length"],
                "tokens": cell["tokens"],
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
    device: str = "cpu",
    batch_sizes: list[int] | tuple[int, ...] = (1, 8, 32),
    lengths: list[int] | tuple[int, ...] = (16, 128, 512),
    repeats: int = 5,
    warmup: int = 1,
    pool: list[str] | None = None,
    engines: tuple[str, ...] = ENGINES,
    progress: bool = False,
    gpu_name: str | None = None,
) -> dict[str, Any]:
    """Both engines over the grid; returns json-ready results with per-cell speedups."""
    from tqdm.auto import tqdm

    from ..manifest import load_manifest
    from ..runtime.tokenize import TextEncoder
    from ..texts import BUILTIN_TEXTS

    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    if repeats < 1 or warmup < 0:
        raise ValueError("speed: repeats must be >= 1 and warmup >= 0")
    lengths = sorted(set(lengths))
    batch_sizes = sorted(set(batch_sizes))
    notes = []
    if max(lengths) > manifest.max_length:
        notes.append(
            f"lengths above the artifact's max length {manifest.max_length} were run at "
            f"{manifest.max_length}"
        )
        lengths = sorted({min(n, manifest.max_length) for n in lengths})
    encoder = TextEncoder(artifact, manifest.max_length, manifest.instruction_template)

    def count(texts: list[str]) -> list[int]:
        return [len(r) for r in encoder.encode(texts, warn=False).ids]

    pool = pool or BUILTIN_TEXTS
    cells: list[dict[str, Any]] = []
    for length in lengths:
        texts_all = make_texts(count, pool, length, max(batch_sizes), offset=length)
        for i, b in enumerate(batch_sizes):
            texts = texts_all[:b]
            cells.append(
                {
                    "batch_size": b,
                    "length": length,
                    "texts": texts,
                    "tokens": int(sum(count(texts))),
                    "first_of_length": i == 0,
                }
            )
    base = {
        "artifact": str(artifact),
        "reference": reference,
        "device": device,
        "cells": cells,
        "repeats": repeats,
        "warmup": warmup,
    }
    results: dict[str, Any] = {}
    with tqdm(
        total=len(cells) * len(engines), desc="speed", disable=not progress, leave=False
    ) as bar:
        for engine in engines:
            results[engine] = _run_engine({**base, "engine": engine}, bar)
    dense = matmul_flops_per_token(artifact / manifest.graph_file)
    peak = gpu_peak_flops(gpu_name, manifest.precision) if device == "cuda" else None
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
    return {
        "device": device,
        "batch_sizes": batch_sizes,
        "lengths": lengths,
        "repeats": repeats,
        "warmup": warmup,
        "texts": "built-in sentences" if pool is BUILTIN_TEXTS else "--texts",
        "engines": {e: results[e]["load"] for e in engines},
        "grid": grid,
        "gpu_peak_flops": peak,
        "mfu_note": None if peak else "MFU is computed on CUDA for known GPUs only",
        "notes": notes,
    }


if __name__ == "__main__":
    worker(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
