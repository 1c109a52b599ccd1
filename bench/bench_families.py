"""XLM-RoBERTa and Gemma3 (bidirectional) on CPU: texts/s and peak RSS of the qexport fp32
artifact (runtime Embedder) vs sentence-transformers in PyTorch fp32, same texts, one run.

Random weights at the published widths with fewer layers (bge-m3: hidden 1024, 16 heads,
ffn 4096; EmbeddingGemma: hidden 768, 3/1 heads of 256, ffn 1152, window 512, Dense
768 -> 3072 -> 768), the hub layout written by `qexport.export.random`, the small
in-process tokenizers (so texts have more tokens than with the real vocabularies), max length
512. Texts: STS-B test sentences (short) and SciFact documents (long) from ../shared. Each
engine runs in its own process: one warm-up pass, then `--repeats` timed passes (median).

    flock /tmp/qexport-heavy.lock python bench/bench_families.py --layers 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA

from qexport.memory import peak_rss_mb


def load_texts(kind: str, n: int) -> list[str]:
    if kind == "short":
        from qexport.validate.sts import load_sts

        return load_sts(DATA / "stsb" / "test.tsv").sentences[:n]
    from qexport.validate.retrieval import load_beir

    return load_beir(DATA / "scifact").corpus_texts[:n]


def worker(args: argparse.Namespace) -> None:
    texts = load_texts(args.texts, args.n)
    if args.engine == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(args.model, device="cpu", model_kwargs={"dtype": torch.float32})

        def run(batch: list[str]):  # type: ignore[no-untyped-def]
            return model.encode(batch, batch_size=args.batch_size)
    else:
        import warnings

        from qexport.runtime import Embedder

        warnings.simplefilter("ignore")  # truncation warnings for long texts
        emb = Embedder(args.engine, device="cpu")

        def run(batch: list[str]):  # type: ignore[no-untyped-def]
            return emb.embed(batch, batch_size=args.batch_size)

    run(texts[: args.batch_size])  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run(texts)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"per_s": len(texts) / median, "peak_rss_mb": peak_rss_mb()}))


def measure(engine: str, model: str, texts: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--model", model,
           "--texts", texts, "--n", str(n), "--repeats", str(args.repeats),
           "--batch-size", str(args.batch_size)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} on {texts} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkpoints(layers: int) -> dict[str, dict]:
    """Published widths, `layers` layers (Gemma: every 4th layer full attention)."""
    gemma_types = ["sliding_attention"] * 3 + ["full_attention"]
    return {
        "xlm-roberta-tiny": dict(
            name="bge-m3 width", max_seq_length=512,
            config={"hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096,
                    "num_hidden_layers": layers},
        ),
        "embeddinggemma-tiny": dict(
            name="embeddinggemma width", max_seq_length=512, dense=(3072, 768),
            config={"hidden_size": 768, "num_attention_heads": 3, "num_key_value_heads": 1,
                    "head_dim": 256, "query_pre_attn_scalar": 256, "intermediate_size": 1152,
                    "sliding_window": 512, "num_hidden_layers": layers,
                    "layer_types": (gemma_types * layers)[:layers]},
        ),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--short", type=int, default=512)
    p.add_argument("--long", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from qexport.export import random as rf
    from qexport.export.api import ExportOptions, export_onnx

    tmp = Path(tempfile.mkdtemp(prefix="bench_families_"))
    rows = ["| model | texts | engine | texts/s | x PyTorch | peak RSS MB |",
            "| --- | --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for base, change in checkpoints(args.layers).items():
        spec = rf.REGISTRY[base]
        name = change.pop("name")
        cfg = dict(spec.config, **change.pop("config"))
        rf.REGISTRY[name] = dataclasses.replace(spec, name=name, config=cfg, **change)
        folder = rf.write_checkpoint(name, tmp / name.replace(" ", "-"))
        art = tmp / (folder.name + "-fp32")
        export_onnx(str(folder), art, ExportOptions(progress=False))
        for label, n in (("short", args.short), ("long", args.long)):
            ref = measure("torch", str(folder), label, n, args)
            ours = measure(str(art), str(folder), label, n, args)
            for engine, r in (("sentence-transformers fp32", ref), ("qexport fp32", ours)):
                rows.append(f"| {name}, {args.layers} layers | {label} ({n}) | {engine} | "
                            f"{r['per_s']:.1f} | {r['per_s'] / ref['per_s']:.2f} | "
                            f"{r['peak_rss_mb']:.0f} |")  # fmt: skip
            print(rows[-1], file=sys.stderr)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
