"""What per-token activation scaling costs around one DynamicQuantizeMatMul, and the
onnxruntime op forms that could do it (issue 28): an FFN output projection of MiniLM's size
(K 1536 -> N 384) on GELU-like activations with outlier tokens, 32 x 24 tokens, 2 threads.

    flock /tmp/qexport-heavy.lock python bench/bench_per_token_ops.py

Forms: per tensor (DynamicQuantizeMatMul alone); qexport's per token (ReduceMax, Max, Div,
DynamicQuantizeMatMul, Mul: dynamic._per_token_input for a GELU output); the same with
Reciprocal + Mul for the Div; a per-row QuantizeLinear (opset 21 blocked, one block per token)
into MatMulIntegerToFloat. Prints the median run time of each (200 runs after 20) and its
relative output error against the float product.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N = 1536, 384


def forms() -> dict[str, list]:  # type: ignore[type-arg]
    node = helper.make_node
    head = [node("ReduceMax", ["x", "axes"], ["m"], keepdims=1), node("Max", ["m", "floor"], ["r"])]
    dqmm = node("DynamicQuantizeMatMul", ["xr", "wq", "ws"], ["y0"], domain="com.microsoft")
    tail = [dqmm, node("Mul", ["y0", "r"], ["y"])]
    return {
        "per tensor": [node("DynamicQuantizeMatMul", ["x", "wq", "ws"], ["y"], domain="com.microsoft")],
        "per token (qexport)": [*head, node("Div", ["x", "r"], ["xr"]), *tail],
        "per token, Reciprocal + Mul": [*head, node("Reciprocal", ["r"], ["ri"]),
                                        node("Mul", ["x", "ri"], ["xr"]), *tail],
        "per token, blocked QuantizeLinear + MatMulIntegerToFloat": [
            *head, node("Mul", ["r", "inv127"], ["qs"]),
            node("QuantizeLinear", ["x", "qs"], ["xq"], axis=-1, block_size=K,
                 output_dtype=TensorProto.INT8),
            node("MatMulIntegerToFloat", ["xq", "wq", "inv127", "ws"], ["y0"], domain="com.microsoft"),
            node("Mul", ["y0", "r"], ["y"])],
    }  # fmt: skip


def main() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, N)).astype(np.float32)
    ws = (np.abs(w).max(0) / 127).astype(np.float32)
    consts = {"wq": np.round(w / ws).astype(np.int8), "ws": ws, "axes": np.array([-1], np.int64),
              "floor": np.array(0.171, np.float32), "inv127": np.array(1 / 127, np.float32)}  # fmt: skip
    z = (rng.normal(size=(32, 24, K)) * 2).astype(np.float32)
    x = z * 0.5 * (1 + np.tanh(0.79788456 * (z + 0.044715 * z**3)))
    x[:, 0] *= 20  # outlier tokens
    ref = x @ w
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    for name, nodes in forms().items():
        used = {i for n in nodes for i in n.input}
        inits = [numpy_helper.from_array(v, k) for k, v in consts.items() if k in used]
        graph = helper.make_graph(
            nodes, "per_token", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])], inits)  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                        helper.make_opsetid("com.microsoft", 1)])  # fmt: skip
        model.ir_version = 10
        sess = ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        y = sess.run(None, {"x": x})[0]
        err = np.linalg.norm(y - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
        for _ in range(20):
            sess.run(None, {"x": x})
        times = []
        for _ in range(200):
            start = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - start)
        print(f"| {name} | {np.median(times) * 1e6:.0f} | {err.max():.4f} / {err.mean():.4f} |")


if __name__ == "__main__":
    main()
