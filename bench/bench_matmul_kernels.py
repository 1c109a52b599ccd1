"""One projection, every CPU kernel a quantized artifact can use: GFLOP/s of onnxruntime's
fp32 MatMul vs MatMulNBits (int8 / int4, block 32 / 128, accuracy level 0 or 4) vs
DynamicQuantizeMatMul (int8-dynamic), on the 0.6B width's gate/up shape [M, 1024] x
[1024, 3072]. Explains the end-to-end ratios in docs/benchmarks.md (Quantization).

    flock /tmp/qexport-heavy.lock python bench/bench_matmul_kernels.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qexport.export.quantize.dynamic import quantize_per_channel
from qexport.export.quantize.matmul_nbits import quantize_blockwise

K, N = 1024, 3072


def session(w: np.ndarray, kind: str, bits: int = 8, block: int = 32, level: int = 4, threads: int = 2):  # type: ignore[no-untyped-def]  # fmt: skip
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, K])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, N])
    if kind == "MatMul fp32":
        node = helper.make_node("MatMul", ["X", "W"], ["Y"])
        inits = [numpy_helper.from_array(w, "W")]
    elif kind == "DynamicQuantizeMatMul":
        q, scale = quantize_per_channel(w)
        inits = [numpy_helper.from_array(q, "B"), numpy_helper.from_array(scale, "S")]
        node = helper.make_node("DynamicQuantizeMatMul", ["X", "B", "S"], ["Y"], domain="com.microsoft")  # fmt: skip
    else:
        packed, scales = quantize_blockwise(w, bits, block)
        inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")]
        attrs = {"K": K, "N": N, "bits": bits, "block_size": block}
        if level:
            attrs["accuracy_level"] = level
        node = helper.make_node("MatMulNBits", ["X", "B", "S"], ["Y"], domain="com.microsoft", **attrs)  # fmt: skip
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, nargs="*", default=[64, 2048])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.03).astype(np.float32)
    configs = [("MatMul fp32", {}), ("DynamicQuantizeMatMul", {})] + [
        (f"MatMulNBits int{b} b{blk} acc{lvl}", {"bits": b, "block": blk, "level": lvl})
        for b in (8, 4)
        for blk in (32, 128)
        for lvl in (4, 0)
    ]
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, [M, {K}] x [{K}, {N}]")
    print("| kernel | " + " | ".join(f"M={m}: ms / GFLOP/s" for m in args.rows) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.rows) + " |")
    for label, kw in configs:
        kind = label if not label.startswith("MatMulNBits") else "MatMulNBits"
        sess = session(w, kind, threads=args.threads, **kw)
        cells = []
        for m in args.rows:
            x = rng.standard_normal((m, K)).astype(np.float32)
            sess.run(None, {"X": x})  # warm-up (prepacking)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                sess.run(None, {"X": x})
                times.append(time.perf_counter() - start)
            t = float(np.median(times))
            cells.append(f"{t * 1e3:.2f} / {2 * m * K * N / t / 1e9:.0f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
