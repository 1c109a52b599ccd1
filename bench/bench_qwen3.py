"""Qwen3 optimized graph vs transformers (PyTorch) vs a plain torch.onnx export vs optimum-onnx.

One run, same machine, same texts:
  * throughput (tokens/s) on real texts of mixed length (SciFact abstracts and STS-B sentences,
    16..512 tokens, real Qwen3 tokenizer), length-sorted batches, median of repeats after warm-up;
  * peak RSS and time of one sequence of 4k / 8k / 16k / 32k tokens, each engine in a fresh
    subprocess with an address-space cap (so a quadratic attention fails instead of swapping).

The model is `random:qwen3-embedding-0.6b` (the real 0.6B shape, seeded weights) truncated to
--layers layers, with the real tokenizer from ../shared/qwen3-embedding/0.6B.

    python bench/bench_qwen3.py --layers 4 --optimum-python /tmp/optimum-venv/bin/python

optimum-onnx pins transformers<4.58, so it lives in its own virtualenv:
    python -m venv /tmp/optimum-venv && /tmp/optimum-venv/bin/pip install torch==2.13.0 \
        optimum-onnx==0.1.0 onnxruntime
(`--optimum-python` is optional; without it the optimum column is left out.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import DATA, REPO, SHARED

sys.path.insert(0, str(REPO))  # the optimum worker runs in a virtualenv without qexport
from qexport.memory import peak_rss_mb

TOK = SHARED / "qwen3-embedding" / "0.6B"
EOS = 151643
CAP_GB = 14


def _ort_session(path: str):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def worker(engine: str, path: str, length: int) -> dict[str, float]:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_GB << 30, CAP_GB << 30))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 100000, size=(1, length), dtype=np.int64)
    ids[0, -1] = EOS
    mask = np.ones_like(ids)
    start = time.perf_counter()
    if engine == "torch":
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        start = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    else:
        if engine == "qexport":  # the runtime's own session: the options users get
            from qexport.runtime.session import create_session

            sess = create_session(Path(path), "cpu", "fp32")
        else:
            sess = _ort_session(path)
        names = {i.name for i in sess.get_inputs()}
        feed = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(length, dtype=np.int64)[None, :]
        start = time.perf_counter()
        sess.run(None, {k: v for k, v in feed.items() if k in names})
    took = time.perf_counter() - start
    return {"seconds": took, "peak_rss_mb": peak_rss_mb()}


# ---------------------------------------------------------------- driver ------------------
def real_texts(n: int, tokenizer) -> list[str]:  # type: ignore[no-untyped-def]
    """n real texts spread over 16..512 tokens: STS-B sentences and SciFact abstracts."""
    texts: list[str] = []
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            texts.append(f"{d['title']} {d['text']}")
    with open(DATA / "stsb" / "test.tsv", encoding="utf-8") as fh:
        for line in fh:
            a, b, _ = line.rstrip("\n").split("\t")
            texts.append(f"{a} {b}")
    lens = [len(x) for x in tokenizer.encode_batch_fast(texts)]
    targets = np.geomspace(16, 512, n)
    chosen, used = [], set()
    order = np.argsort(lens)
    sorted_lens = np.array(lens)[order]
    for t in targets:
        j = int(np.searchsorted(sorted_lens, t))
        while order[min(j, len(order) - 1)] in used:
            j += 1
        k = int(order[min(j, len(order) - 1)])
        used.add(k)
        text = texts[k]
        if lens[k] > 512:  # cut long abstracts to ~512 tokens
            ids = tokenizer.encode(text, add_special_tokens=False).ids[:511]
            text = tokenizer.decode(ids)
        chosen.append(text)
    return chosen


def batches_of(lengths: list[int], size: int) -> list[list[int]]:
    order = np.argsort(lengths, kind="stable")
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


def time_runs(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def export_plain(model, out: Path) -> None:  # type: ignore[no-untyped-def]
    """torch.onnx.export (dynamo) of the transformers model: what a user gets without fusion."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, m):  # type: ignore[no-untyped-def]
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(1000, 2000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=32768)
    torch.onnx.export(
        Wrapper(model).eval(), (ids, mask), str(out), dynamo=True, opset_version=18,
        input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        external_data=True, optimize=True,
    )  # fmt: skip


def ort_runner(path: Path, groups: list[list[int]], ids: list[list[int]]):  # type: ignore[no-untyped-def]
    """A callable that runs every batch of `groups` through onnxruntime on the graph at `path`."""
    from qexport.runtime.tokenize import pad_right

    sess = _ort_session(str(path))
    names = {i.name for i in sess.get_inputs()}

    def go() -> None:
        for g in groups:
            batch, mask = pad_right([ids[i] for i in g])
            feed = {"input_ids": batch, "attention_mask": mask}
            if "position_ids" in names:
                feed["position_ids"] = np.broadcast_to(
                    np.arange(batch.shape[1]), batch.shape
                ).astype(np.int64)
            sess.run(None, feed)

    return go


def fresh_process_cell(python: str, kind: str, path: str, n: int) -> str:
    """Peak RSS and seconds of one `n`-token sequence in a fresh worker process, or why not."""
    proc = subprocess.run(
        [python, __file__, "--worker", kind, path, str(n)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode == 0:
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        return f"{r['peak_rss_mb']:,.0f} MB / {r['seconds']:.1f} s"
    err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    oom = "alloc" in err.lower() or "memory" in err.lower()
    return "failed: " + ("out of memory (cap)" if oom else err[:60])


def memory_table(
    engines: dict[str, str], lengths: list[int], optimum_python: str | None
) -> list[str]:
    """The one-sequence table: a row per length, a fresh-process cell per engine."""
    lines = ["| tokens | " + " | ".join(engines) + " |"]
    lines.append("| ---: | " + " | ".join("---:" for _ in engines) + " |")
    for n in lengths:
        cells = []
        for name, path in engines.items():
            python = optimum_python if name == "optimum-onnx" else sys.executable
            kind = "torch" if name.startswith("transformers") else "qexport" if name.startswith("qexport") else "ort"  # fmt: skip
            cells.append(fresh_process_cell(python or sys.executable, kind, path, n))
            print(n, name, cells[-1], flush=True)
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", type=int, nargs="*", default=[4096, 8192, 16384, 32768])
    p.add_argument("--optimum-python", default=None)
    p.add_argument("--workdir", default=str(REPO / "bench" / "results" / "qwen3"))
    p.add_argument("--worker", nargs=3, metavar=("ENGINE", "PATH", "LENGTH"))
    args = p.parse_args()
    if args.worker:
        engine, path, length = args.worker
        print(json.dumps(worker(engine, path, int(length))))
        return

    import torch
    from tokenizers import Tokenizer

    from qexport.export.api import ExportOptions, export_onnx
    from qexport.runtime import Embedder
    from qexport.validate.reference import TorchReference, last_token_pool

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_id = "random:qwen3-embedding-0.6b"
    ours = work / "qexport-fp32"
    export_onnx(
        model_id,
        ours,
        ExportOptions(layers=args.layers, tokenizer=TOK, overwrite=True, progress=False),
    )
    ours16 = work / "qexport-fp16"
    export_onnx(model_id, ours16, ExportOptions(layers=args.layers, tokenizer=TOK, overwrite=True, progress=False, precision="fp16"))  # fmt: skip
    ref = TorchReference(model_id, tokenizer=TOK, layers=args.layers)
    ckpt = work / "hf-checkpoint"
    ref.model.save_pretrained(ckpt)
    ref.tokenizer.save_pretrained(ckpt)
    plain = work / "plain" / "model.onnx"
    plain.parent.mkdir(exist_ok=True)
    if not plain.exists():
        export_plain(ref.model, plain)
    optimum = work / "optimum"
    if args.optimum_python and not (optimum / "model.onnx").exists():
        subprocess.run(
            [args.optimum_python, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(ckpt),
             "--task", "feature-extraction", "--no-post-process", str(optimum)],
            check=True,
        )  # fmt: skip

    tok = Tokenizer.from_file(str(TOK / "tokenizer.json"))
    texts = real_texts(args.texts, tok)
    emb = Embedder(ours, device="cpu")
    enc = emb.encoder.encode(texts)
    lengths = [len(x) for x in enc.ids]
    n_tokens = sum(lengths)
    groups = batches_of(lengths, args.batch)

    results: dict[str, float] = {}
    results["qexport fp32"] = time_runs(
        lambda: emb.embed(texts, batch_size=args.batch), args.repeats
    )
    emb16 = Embedder(ours16, device="cpu")
    results["qexport fp16"] = time_runs(
        lambda: emb16.embed(texts, batch_size=args.batch), args.repeats
    )

    def run_torch() -> None:
        with torch.inference_mode():
            for g in groups:
                batch = ref.tokenize([texts[i] for i in g])
                h = ref.model(**batch).last_hidden_state
                torch.nn.functional.normalize(last_token_pool(h, batch["attention_mask"]), dim=1)

    torch.set_num_threads(os.cpu_count() or 1)
    results["transformers fp32 (sdpa)"] = time_runs(run_torch, args.repeats)

    results["plain torch.onnx export fp32"] = time_runs(
        ort_runner(plain, groups, enc.ids), args.repeats
    )
    if (optimum / "model.onnx").exists():
        results["optimum-onnx fp32"] = time_runs(
            ort_runner(optimum / "model.onnx", groups, enc.ids), args.repeats
        )

    base = results["transformers fp32 (sdpa)"]
    lines = [
        f"Texts: {len(texts)} real texts (SciFact abstracts, STS-B pairs), {min(lengths)}..{max(lengths)} tokens, "
        f"{n_tokens} tokens in all; batches of {args.batch}, length-sorted; median of {args.repeats} after warm-up.",
        "",
        "| engine | seconds | tokens/s | vs PyTorch |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, secs in results.items():
        lines.append(f"| {name} | {secs:.2f} | {n_tokens / secs:,.0f} | {base / secs:.2f}x |")

    engines = {
        "qexport fp32": str(ours / "model.onnx"),
        "transformers fp32 (sdpa)": str(ckpt),
        "plain export": str(plain),
    }
    if (optimum / "model.onnx").exists():
        engines["optimum-onnx"] = str(optimum / "model.onnx")
    lines += [
        "",
        f"One sequence, peak RSS of a fresh process (MB) / seconds; address space capped at {CAP_GB} GB:",
        "",
    ]
    lines += memory_table(engines, args.lengths, args.optimum_python)
    print("\n".join(lines))
    (work / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
