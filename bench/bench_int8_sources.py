"""Where int8-dynamic's error comes from on all-MiniLM-L6-v2 (issue 28): per projection, the
weight error alone (int8 per-channel weights dequantized into an fp32 MatMul), the activation
error alone (DynamicQuantizeLinear -> DequantizeLinear before an fp32 MatMul: uint8 per
tensor, as DynamicQuantizeMatMul sees it) and both (DynamicQuantizeMatMul), each measured
alone, then every projection at once; min / mean cosine against the fp32 artifact on
held-out texts (qexport.validate.heldout), Embedder.embed in its default batches.

    nice -n 19 python bench/bench_int8_sources.py --fp32 /tmp/i8/fp32
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from common import DATA
from onnx import helper, numpy_helper

from qexport.export.quantize.dynamic import quantize_per_channel
from qexport.runtime import Embedder
from qexport.util import row_cosines
from qexport.validate.heldout import held_out_texts


def projections(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def variant(model: onnx.ModelProto, names: set[str], kind: str) -> onnx.ModelProto:
    """A copy with the projections whose weight is in `names` quantized as `kind`:
    W (weights only), A (activations only) or WA (DynamicQuantizeMatMul)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = list(m.graph.node)
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if n.op_type != "MatMul" or n.input[1] not in names:
            out.append(n)
            continue
        wname = n.input[1]
        w = numpy_helper.to_array(inits[wname]).astype(np.float32)
        q, s = quantize_per_channel(w)
        if kind == "W":
            inits[wname].CopyFrom(numpy_helper.from_array((q * s).astype(np.float32), wname))
            out.append(n)
        elif kind == "A":
            x = n.input[0]
            out.append(
                helper.make_node("DynamicQuantizeLinear", [x], [x + "_q", x + "_s", x + "_z"])
            )
            out.append(
                helper.make_node("DequantizeLinear", [x + "_q", x + "_s", x + "_z"], [x + "_fq"])
            )
            out.append(helper.make_node("MatMul", [x + "_fq", wname], list(n.output), name=n.name))
        else:
            m.graph.initializer.remove(inits[wname])
            m.graph.initializer.extend(
                [numpy_helper.from_array(q, wname + "_q"), numpy_helper.from_array(s, wname + "_s")]
            )
            out.append(helper.make_node("DynamicQuantizeMatMul", [n.input[0], wname + "_q", wname + "_s"],
                                        list(n.output), name=n.name, domain="com.microsoft"))  # fmt: skip
    del m.graph.node[:]
    m.graph.node.extend(out)
    return m


def embed(fp32: Path, model: onnx.ModelProto, work: Path, texts: list[str]) -> np.ndarray:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(fp32, work)
    onnx.save(model, str(work / "model.onnx"))
    return Embedder(work, device="cpu", threads=2).embed(texts)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fp32", type=Path, required=True, help="the fp32 MiniLM artifact")
    p.add_argument("--work", type=Path, default=Path("/tmp/i8/work"))
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--documents", type=int, default=100)
    p.add_argument("--kinds", default="W,A,WA")
    p.add_argument("--scopes", default="projection", help="projection, or type,layer (grouped)")
    args = p.parse_args()
    texts = held_out_texts(DATA, sentences=args.sentences, documents=args.documents)
    model = onnx.load(str(args.fp32 / "model.onnx"))
    ref = Embedder(args.fp32, device="cpu", threads=2).embed(texts)
    projs = [n.input[1] for n in projections(model)]
    rows = []
    scopes: dict[str, list[str]] = {}
    for kind in args.scopes.split(","):
        if kind == "projection":
            scopes.update((p, [p]) for p in projs)
        for p in projs if kind in ("type", "layer") else []:
            layer, kind_name = p.split(".")[2], ".".join(p.split(".")[3:5])
            scopes.setdefault(f"layer {layer}" if kind == "layer" else kind_name, []).append(p)
    scopes["all"] = projs
    for label, scope in scopes.items():
        row: dict[str, object] = {"projection": label}
        for kind in args.kinds.split(","):
            cos = row_cosines(
                embed(args.fp32, variant(model, set(scope), kind), args.work, texts), ref
            )
            row[kind] = (round(float(cos.min()), 5), round(float(cos.mean()), 6))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| projection | " + " | ".join(f"{k} min / mean" for k in args.kinds.split(",")) + " |")
    print("| --- |" + " --- |" * len(args.kinds.split(",")))
    for r in rows:
        cells = " | ".join(f"{r[k][0]:.5f} / {r[k][1]:.5f}" for k in args.kinds.split(","))  # type: ignore[index]
        print(f"| {r['projection']} | {cells} |")


if __name__ == "__main__":
    main()
