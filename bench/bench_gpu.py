"""Qwen3-Embedding-4B shape on one CUDA GPU: qexport artifacts vs PyTorch.

Runs where a GPU, torch with CUDA and onnxruntime-gpu are (the lent H100/H200: see
bench/device/README.md for the exact calls). Steps, each writing JSON under WORKDIR/results:

  prepare  (here, beside ../shared) real texts + the Qwen3 tokenizer into .devshared/ to carry
  export   fp16 / bf16 / int8 / int4 artifacts of random:qwen3-embedding-4b, in parallel
  torch    PyTorch: fp32 reference vectors, then bf16 (sdpa) throughput and long-sequence memory
  ort ART  one artifact on the CUDA provider: node placement (profiler), fidelity vs the fp32
           reference, throughput on the same texts, one sequence of 4k..32k tokens
  report   the markdown table for docs/benchmarks.md

Throughput: the same real texts (SciFact abstracts and STS-B pairs, 16..512 tokens) for every
engine, the same token-budget batches (qexport.runtime.batching.plan_batches), tokenisation
included, one warm-up pass then the median of --repeats passes. GPU memory: peak of the
engine's process as NVML reports it (weights + activations + allocator caches + CUDA context),
sampled every 2 ms; PyTorch also reports torch.cuda.max_memory_allocated. MFU: FLOPs of the
graph's MatMuls plus attention (4 x L x heads x head_dim per token and layer) over the dense
fp16/bf16 peak of the GPU (989 TFLOP/s for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "random:qwen3-embedding-4b"
DEVSHARED = REPO / ".devshared"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}
LONG = (4096, 8192, 16384, 32768)
EOS = 151643


# ------------------------------------------------------------------------------ helpers
class NoGpu:
    """Stand-in on a machine without NVML (a dry run of the script on CPU)."""

    name, source, peak = "none", "none", 0.0

    def reset(self) -> None:
        pass

    def read(self) -> float:
        return float("nan")

    def close(self) -> None:
        pass


def gpu_memory(device: str) -> Any:
    from qexport.memory import GpuMemory

    return GpuMemory() if device == "cuda" else NoGpu()


def _median_time(fn: Any, repeats: int, sync: Any = None) -> tuple[float, list[float]]:
    fn()  # warm-up
    if sync:
        sync()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs


def _save(workdir: Path, name: str, result: dict[str, Any]) -> None:
    out = workdir / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "vectors"})[:4000], flush=True)


def _texts(args: argparse.Namespace) -> list[str]:
    with open(args.texts, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def _flops(cfg: dict[str, Any], lengths: list[int]) -> float:
    """Projections plus attention over whole sequences (the validator's flops_per_token)."""
    from qexport.validate.speed import flops_per_token

    dense = _dense_flops(cfg)
    return float(sum(n * flops_per_token(dense, cfg, n) for n in lengths))


def _dense_flops(cfg: dict[str, Any]) -> float:
    """2 x the projection weights of every decoder layer, per token."""
    h, d, f = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return 2.0 * cfg["num_hidden_layers"] * (h * (q + 2 * kv) + q * h + 3 * h * f)


def _config(model: str, layers: int | None) -> dict[str, Any]:
    from qexport.export.random import REGISTRY

    cfg = dict(REGISTRY[model.split(":", 1)[1]].config)
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


# ------------------------------------------------------------------------------ prepare
def cmd_prepare(args: argparse.Namespace) -> None:
    from tokenizers import Tokenizer

    sys.path.insert(0, str(REPO / "bench"))
    from bench_qwen3 import real_texts
    from common import SHARED

    tok_src = SHARED / "qwen3-embedding" / "0.6B"  # one tokenizer for 0.6B, 4B and 8B
    DEVSHARED.mkdir(exist_ok=True)
    tok_dst = DEVSHARED / "tokenizer"
    shutil.rmtree(tok_dst, ignore_errors=True)
    tok_dst.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_src / f, tok_dst / f)
    texts = real_texts(args.n, Tokenizer.from_file(str(tok_src / "tokenizer.json")))
    with open(DEVSHARED / "texts.jsonl", "w", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    # the export is tested with this machine's onnx-ir; the GPU image may hold an older one
    import zipfile

    import onnx_ir

    site = DEVSHARED / "site"
    shutil.rmtree(site, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
             f"onnx-ir=={onnx_ir.__version__}"],
            check=True,
        )  # fmt: skip
        for wheel in Path(tmp).glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(site)
    print(f"{len(texts)} texts, the tokenizer and onnx-ir {onnx_ir.__version__} in {DEVSHARED}")


# ------------------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> None:
    """Each precision in its own process, all at once; peak RSS and time per export."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    procs = {}
    for spec in args.precisions:
        precision, *extra = spec.split(":")
        name = precision + "".join("-" + e.lstrip("-").split("=")[-1] for e in extra)
        cmd = [
            sys.executable, "-m", "qexport.cli", "onnx", args.model, "-o", str(workdir / name),
            "--precision", precision, "--tokenizer", args.tokenizer, "--overwrite",
        ]  # fmt: skip
        if precision in ("int8", "int4"):
            cmd += ["--device", "cuda"]
        cmd += [a for e in extra for a in e.split("=")]
        log = open(workdir / f"export-{name}.log", "w")
        wrapped = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
        procs[name] = (
            subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT),
            log,
            time.time(),
        )
    ended: dict[str, float] = {}
    while len(ended) < len(procs):  # each export's own wall time, not the time to wait for it
        for name, (proc, _, _) in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.time()
        time.sleep(0.5)
    for name, (proc, log, t0) in procs.items():
        rc = proc.returncode
        log.close()
        text = (workdir / f"export-{name}.log").read_text()
        rss = [line.split(":")[1] for line in text.splitlines() if "Maximum resident" in line]
        folder = workdir / name
        size = sum(f.stat().st_size for f in folder.iterdir()) if folder.is_dir() else 0
        _save(
            workdir,
            f"export-{name}",
            {"name": name, "rc": rc, "seconds": round(ended[name] - t0, 1),
             "peak_rss_gb": round(int(rss[0]) / 2**20, 2) if rss else None,
             "bytes": size, "tail": text[-1500:]},
        )  # fmt: skip


# ------------------------------------------------------------------------------ torch
def cmd_torch(args: argparse.Namespace) -> None:
    import torch

    from qexport.runtime.batching import plan_batches
    from qexport.util import row_cosines
    from qexport.validate.reference import TorchReference, last_token_pool

    workdir = Path(args.workdir)
    texts = _texts(args)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is fp32
    gpu = gpu_memory(args.device)
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    t0 = time.time()
    ref = TorchReference(
        args.model, tokenizer=args.tokenizer, layers=args.layers, device=args.device,
        dtype="fp32", max_length=32768,
    )  # fmt: skip
    load_s = time.time() - t0
    parity = texts[: args.parity]
    ref_vectors = ref.embed(parity, batch_size=8)
    np.save(workdir / "reference_fp32.npy", ref_vectors)
    model, tok = ref.model, ref.tokenizer
    model.to(torch.bfloat16)  # the PyTorch baseline users run: bf16, sdpa
    if cuda:
        torch.cuda.empty_cache()
    bf16_vectors = ref.embed(parity, batch_size=8)
    cos = row_cosines(bf16_vectors, ref_vectors)

    lengths = [len(x) for x in tok(texts)["input_ids"]]
    plan = plan_batches(lengths, args.max_batch_tokens, args.batch_size)

    def run_texts() -> None:
        with torch.inference_mode():
            for idx in plan:
                batch = tok([texts[i] for i in idx], padding=True, return_tensors="pt")
                batch = batch.to(args.device)
                hidden = model(**batch).last_hidden_state
                emb = torch.nn.functional.normalize(
                    last_token_pool(hidden, batch["attention_mask"]).float(), dim=1
                )
                emb.cpu()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gpu.reset()
    med, runs = _median_time(run_texts, args.repeats, sync)
    tokens = sum(lengths)
    result: dict[str, Any] = {
        "engine": "pytorch bf16 sdpa", "gpu": gpu.name, "torch": torch.__version__,
        "load_s": round(load_s, 1), "texts": len(texts), "tokens": tokens,
        "padded_tokens": int(sum(len(b) * max(lengths[i] for i in b) for b in plan)),
        "batches": len(plan), "seconds": med, "runs": runs, "tokens_per_s": tokens / med,
        "gpu_peak_mb": gpu.read() / 2**20, "gpu_memory_source": gpu.source,
        "torch_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "bf16_vs_fp32_min_cosine": float(cos.min()), "bf16_vs_fp32_mean_cosine": float(cos.mean()),
        "flops": _flops(_config(args.model, args.layers), lengths),
    }  # fmt: skip
    if cuda:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        mm, _ = _median_time(lambda: a @ b, 10, sync)
        result["matmul_bf16_tflops"] = 2 * 8192**3 / mm / 1e12
        del a, b
    long = []
    rng = np.random.default_rng(0)
    for n in args.long:
        ids = torch.from_numpy(rng.integers(1000, 100000, size=(1, n))).to(args.device)
        ids[0, -1] = EOS
        mask = torch.ones_like(ids)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        gpu.reset()

        def one(ids: Any = ids, mask: Any = mask) -> None:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1].float().cpu()

        try:
            sec, _ = _median_time(one, 3, sync)
            alloc = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            long.append({"length": n, "seconds": sec, "gpu_peak_mb": gpu.read() / 2**20,
                         "torch_max_allocated_mb": alloc})  # fmt: skip
        except torch.OutOfMemoryError as exc:
            long.append({"length": n, "error": str(exc).splitlines()[0]})
    result["long"] = long
    gpu.close()
    _save(workdir, "torch", result)


# ------------------------------------------------------------------------------ ort
def _placement(emb: Any, texts: list[str]) -> dict[str, int]:
    """Nodes per execution provider in one profiled run (onnxruntime's profiler records each
    node's provider)."""
    emb.embed(texts[:4])
    trace = emb.session.end_profiling()
    counts: dict[str, int] = {}
    with open(trace, encoding="utf-8") as fh:
        events = json.load(fh)
    seen = set()
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in a and e["name"] not in seen:
            seen.add(e["name"])
            op = a.get("op_name", "?")
            key = f"{a['provider']}:{op}"
            counts[key] = counts.get(key, 0) + 1
    os.remove(trace)
    return counts


def cmd_ort(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    from qexport.runtime import Embedder
    from qexport.runtime.batching import plan_batches
    from qexport.runtime.session import session_options
    from qexport.util import row_cosines

    workdir = Path(args.workdir)
    art = workdir / args.artifact
    texts = _texts(args)
    gpu = gpu_memory(args.device)
    opts = session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / f"profile-{args.artifact}")
    t0 = time.time()
    emb = Embedder(art, device=args.device, session_options=opts,
                   max_batch_tokens=args.max_batch_tokens)  # fmt: skip
    load_s = time.time() - t0
    load_mb = gpu.read() / 2**20
    placement = _placement(emb, texts)
    on_cpu = {k: v for k, v in placement.items() if k.startswith("CPUExecutionProvider")}
    parity = texts[: args.parity]
    ours = emb.embed(parity, batch_size=8)
    ref_path = workdir / "reference_fp32.npy"
    fidelity = {}
    if ref_path.exists():
        ref = np.load(ref_path)
        if len(ref) != len(parity):
            raise SystemExit(f"{ref_path} holds {len(ref)} texts: run with --parity {len(ref)}")
        cos = row_cosines(ours, ref)
        fidelity = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    ids, _, _, _ = emb.tokenize(texts)
    lengths = [len(x) for x in ids]
    plan = plan_batches(lengths, args.max_batch_tokens, args.batch_size)
    gpu.reset()
    med, runs = _median_time(lambda: emb.embed(texts, batch_size=args.batch_size), args.repeats)
    tokens = sum(lengths)
    cfg = _config(args.model, args.layers)
    result: dict[str, Any] = {
        "engine": f"qexport {args.artifact}", "artifact": args.artifact, "gpu": gpu.name,
        "onnxruntime": ort.__version__, "providers": emb.providers, "io_binding": emb.io_binding,
        "flash_disabled": os.environ.get("ORT_DISABLE_FLASH_ATTENTION", "0") == "1",
        "placement_cpu_nodes": on_cpu, "placement": placement, "load_s": round(load_s, 1),
        "gpu_after_load_mb": load_mb, "texts": len(texts), "tokens": tokens,
        "padded_tokens": int(sum(len(b) * max(lengths[i] for i in b) for b in plan)),
        "batches": len(plan), "seconds": med, "runs": runs, "tokens_per_s": tokens / med,
        "gpu_peak_mb": gpu.read() / 2**20, "gpu_memory_source": gpu.source,
        "flops": _flops(cfg, lengths), **fidelity,
    }  # fmt: skip
    long = []
    rng = np.random.default_rng(0)
    for n in args.long:
        row = rng.integers(1000, 100000, size=n).tolist()
        row[-1] = EOS
        gpu.reset()
        try:
            sec, _ = _median_time(lambda row=row: emb.run_batch([row], [[0] * len(row)]), 3)
            long.append({"length": n, "seconds": sec, "gpu_peak_mb": gpu.read() / 2**20})
        except Exception as exc:  # onnxruntime raises its own types (out of memory, ...)
            long.append({"length": n, "error": str(exc).splitlines()[0][:300]})
    result["long"] = long
    gpu.close()
    suffix = "-noflash" if result["flash_disabled"] else ""
    _save(workdir, f"ort-{args.artifact}{suffix}", result)


# ------------------------------------------------------------------------------ report
def _engine_row(r: dict[str, Any], torch_r: dict[str, Any] | None, peak: float | None) -> str:
    """One engine's row: throughput, ratio to PyTorch, MFU, memory, cosines, long sequences."""
    ratio = r["tokens_per_s"] / torch_r["tokens_per_s"] if torch_r else float("nan")
    mfu = r["flops"] / r["seconds"] / 1e12 / peak if peak else float("nan")
    if "min_cosine" in r:
        cos = f"{r['min_cosine']:.5f} / {r['mean_cosine']:.5f}"
    elif "bf16_vs_fp32_min_cosine" in r:
        cos = f"{r['bf16_vs_fp32_min_cosine']:.5f} / {r['bf16_vs_fp32_mean_cosine']:.5f}"
    else:
        cos = "-"
    cells = []
    by_len = {x["length"]: x for x in r.get("long", [])}
    for n in LONG:
        x = by_len.get(n)
        if x is None:
            cells.append("-")
        elif "error" in x:
            cells.append("fails")
        else:
            cells.append(f"{x['seconds']:.2f} / {x['gpu_peak_mb']:,.0f}")
    name = r["engine"] + (" (flash off)" if r.get("flash_disabled") else "")
    return (
        f"| {name} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | {mfu:.1%} | "
        f"{r['gpu_peak_mb']:,.0f} | {cos} | " + " | ".join(cells) + " |"
    )


def cmd_report(args: argparse.Namespace) -> None:
    res = {
        p.stem: json.loads(p.read_text())
        for p in sorted((Path(args.workdir) / "results").glob("*.json"))
    }
    torch_r = res.get("torch")
    peak = next((v for k, v in PEAK_TFLOPS.items() if torch_r and k in torch_r["gpu"]), None)
    lines = []
    engines = [r for k, r in res.items() if k == "torch" or k.startswith("ort-")]
    if engines:
        lines += [
            "| engine | tokens/s | vs PyTorch bf16 | MFU | GPU peak MB (texts) | min / mean cosine vs fp32 | "
            + " | ".join(f"{n // 1024}k s / MB" for n in LONG)
            + " |",
            "|---" * (6 + len(LONG)) + "|",
        ]
        lines += [_engine_row(r, torch_r, peak) for r in engines]
    exports = [r for k, r in res.items() if k.startswith("export-")]
    if exports:
        lines += ["", "| export | rc | seconds | peak RSS GB | size GB |", "|---|---|---|---|---|"]
        for r in exports:
            lines.append(
                f"| {r['name']} | {r['rc']} | {r['seconds']} | {r['peak_rss_gb']} | {r['bytes'] / 1e9:.2f} |"
            )
    for k, r in res.items():
        if k.startswith("ort-") and r.get("placement_cpu_nodes"):
            lines.append(f"\n{k}: nodes on CPU: {r['placement_cpu_nodes']}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare")
    pr.add_argument("--n", type=int, default=256)
    for name in ("export", "torch", "ort", "report"):
        s = sub.add_parser(name)
        s.add_argument("--workdir", default="/tmp/gpu-bench")
        if name == "report":
            s.add_argument("--out", default=None)
            continue
        s.add_argument("--model", default=MODEL)
        s.add_argument("--tokenizer", default=str(DEVSHARED / "tokenizer"))
        s.add_argument("--layers", type=int, default=None, help="(torch/ort) FLOP count only")
        if name == "export":
            s.add_argument("--precisions", nargs="+", default=["fp16", "bf16", "int8", "int4"])
            continue
        s.add_argument("--texts", default=str(DEVSHARED / "texts.jsonl"))
        s.add_argument("--parity", type=int, default=64, help="texts compared with fp32")
        s.add_argument("--repeats", type=int, default=3)
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--max-batch-tokens", type=int, default=16384)
        s.add_argument("--long", type=int, nargs="*", default=list(LONG))
        s.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
        if name == "ort":
            s.add_argument("artifact")
    args = p.parse_args()
    {"prepare": cmd_prepare, "export": cmd_export, "torch": cmd_torch, "ort": cmd_ort,
     "report": cmd_report}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    main()
