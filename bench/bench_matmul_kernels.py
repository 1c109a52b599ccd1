"""One projection, every CPU kernel a quantized artifact can use: GFLOP/s of onnxruntime's
fp32 MatMul vs MatMulNBits (int8 / int4, block 32 / 128, accuracy level 0 or 4) vs
DynamicQuantizeMatMul (int8-dynamic), on the 0.6B width's gate/up shape [M, 1024] x
[1024, 3072]. Explains the end-to-end ratios in docs/benchmarks.md (Quantization).

    flock /tmp/qexport-heavy.lock python bench/bench_matmul_kernels.py

`--weights-mb` runs that many MB of weights per kernel (copies of the projection, each with its
own buffers, run one after the other), so they come from memory rather than from the cache, as
a whole model's do; the table then gives the time per projection and the rate at which the
kernel reads its weights (issue 20: one short query, docs/benchmarks.md "One short query"):

    flock /tmp/qexport-heavy.lock python bench/bench_matmul_kernels.py --rows 1 4 20 64 \
        --weights-mb 450 --configs fp32 dynamic int8-b32-acc4 int4-b32-acc4
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


def projection(w: np.ndarray, kind: str, bits: int, block: int, level: int) -> tuple[list[np.ndarray], str, dict[str, int]]:  # fmt: skip
    """The weights (B, scales), op type and attributes of one projection node."""
    if kind == "MatMul fp32":
        return [w], "MatMul", {}
    if kind == "DynamicQuantizeMatMul":
        return list(quantize_per_channel(w)), kind, {}
    attrs = {"K": K, "N": N, "bits": bits, "block_size": block}
    if level:
        attrs["accuracy_level"] = level
    return list(quantize_blockwise(w, bits, block)), "MatMulNBits", attrs


def session(node: tuple[list[np.ndarray], str, dict[str, int]], threads: int = 2, copies: int = 1) -> ort.InferenceSession:  # fmt: skip
    """A session over `copies` independent projections of X (`node`: what `projection` returns),
    each with its own weights."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, K])
    weights, op, attrs = node
    domain = "" if op == "MatMul" else "com.microsoft"
    nodes, inits, outs = [], [], []
    for i in range(copies):
        names = [f"W{i}_{j}" for j in range(len(weights))]
        # each copy's own numbers (rolled): identical copies would read faster than memory
        inits += [numpy_helper.from_array(np.roll(a, i, axis=0), n) for a, n in zip(weights, names, strict=True)]  # fmt: skip
        nodes.append(helper.make_node(op, ["X", *names], [f"Y{i}"], domain=domain, **attrs))
        outs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, [None, N]))
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs, inits),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])  # fmt: skip


def configs() -> dict[str, tuple[str, dict[str, int]]]:
    """Short name -> (row label, session keywords) of every kernel measured."""
    out = {"fp32": ("MatMul fp32", {}), "dynamic": ("DynamicQuantizeMatMul", {})}
    for b in (8, 4):
        for blk in (32, 128):
            for lvl in (4, 0):
                kw = {"bits": b, "block": blk, "level": lvl}
                out[f"int{b}-b{blk}-acc{lvl}"] = (f"MatMulNBits int{b} b{blk} acc{lvl}", kw)
    return out


def timed(sess: ort.InferenceSession, x: np.ndarray, repeats: int) -> float:
    """Median seconds of one run after a warm-up run (prepacking)."""
    sess.run(None, {"X": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {"X": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    table = configs()
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, nargs="*", default=[64, 2048])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights-mb", type=float, default=0.0,
                   help="MB of weights per kernel (copies of the projection): from memory, not cache")  # fmt: skip
    p.add_argument("--configs", nargs="*", default=list(table), choices=list(table))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.03).astype(np.float32)
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, [M, {K}] x [{K}, {N}]")
    unit = "ms / GFLOP/s" + (" / GiB/s" if args.weights_mb else "")
    print("| kernel | copies | " + " | ".join(f"M={m}: {unit}" for m in args.rows) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in args.rows) + " |")
    for name in args.configs:
        label, kw = table[name]
        kind = label if not label.startswith("MatMulNBits") else "MatMulNBits"
        node = projection(w, kind, kw.get("bits", 8), kw.get("block", 32), kw.get("level", 4))
        nbytes = sum(a.nbytes for a in node[0])  # B and scales: what the kernel reads
        copies = max(1, round(args.weights_mb * 1e6 / nbytes))
        sess = session(node, threads=args.threads, copies=copies)
        cells = []
        for m in args.rows:
            t = timed(sess, rng.standard_normal((m, K)).astype(np.float32), args.repeats) / copies
            cell = f"{t * 1e3:.3f} / {2 * m * K * N / t / 1e9:.0f}"
            cells.append(cell + (f" / {nbytes / t / (1 << 30):.1f}" if args.weights_mb else ""))
        print(f"| {label} | {copies} | " + " | ".join(cells) + " |", flush=True)
        del sess


if __name__ == "__main__":
    main()
