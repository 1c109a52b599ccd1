"""A thin graph builder over onnx-ir's Tape: inputs, outputs, constants, lazily loaded weights.

Weights are `ir.LazyTensor`s: their bytes are produced only when the model is saved, one
tensor at a time, and dropped right after they are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from .weights import convert

OPSET = 21
MS_DOMAIN = "com.microsoft"

NP_DTYPES: dict[str, np.dtype] = {
    "fp32": np.dtype(np.float32),
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
}
IR_DTYPES: dict[str, ir.DataType] = {
    "fp32": ir.DataType.FLOAT,
    "fp16": ir.DataType.FLOAT16,
    "bf16": ir.DataType.BFLOAT16,
}


class GraphBuilder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tape = ir.tape.Tape()
        self.inputs: list[ir.Value] = []
        self.outputs: list[ir.Value] = []
        self._n = 0
        self.weight_bytes = 0

    # -- values ---------------------------------------------------------------------------
    def input(self, name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
        value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))
        self.inputs.append(value)
        return value

    def output(
        self,
        value: ir.Value,
        name: str,
        shape: Sequence[int | str],
        dtype: ir.DataType = ir.DataType.FLOAT,
    ) -> None:
        value.name = name
        value.type = ir.TensorType(dtype)
        value.shape = ir.Shape(list(shape))
        self.outputs.append(value)

    def const(self, array: Any, name: str | None = None, dtype: np.dtype | None = None) -> ir.Value:
        arr = np.asarray(array, dtype=dtype)
        self._n += 1
        return self.tape.initializer(ir.tensor(arr), name=name or f"const_{self._n}")

    def weight(
        self, name: str, shape: Sequence[int], dtype: np.dtype, load: Callable[[], np.ndarray]
    ) -> ir.Value:
        """A weight initializer whose data is loaded (and converted) only when written."""

        def make() -> ir.TensorProtocol:
            arr = np.ascontiguousarray(convert(load(), dtype))
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"weight {name}: shape {arr.shape}, expected {tuple(shape)}")
            return ir.tensor(arr, name=name)

        ir_dtype = ir.DataType.from_numpy(dtype)
        tensor = ir.LazyTensor(make, dtype=ir_dtype, shape=ir.Shape(list(shape)), name=name)
        self.weight_bytes += int(np.prod(shape)) * dtype.itemsize
        return self.tape.initializer(tensor, name=name)

    # -- nodes ----------------------------------------------------------------------------
    def op(
        self, op_type: str, *inputs: ir.Value | None, domain: str = "", **attrs: Any
    ) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attrs or None, domain=domain)

    def ops(
        self, op_type: str, *inputs: ir.Value | None, n: int, domain: str = "", **attrs: Any
    ) -> Sequence[ir.Value]:
        return self.tape.op_multi_out(
            op_type, list(inputs), attrs or None, num_outputs=n, domain=domain
        )

    def cast(self, value: ir.Value, to: ir.DataType) -> ir.Value:
        return self.op("Cast", value, to=int(to))

    def i64(self, values: Sequence[int] | int) -> ir.Value:
        return self.const(np.array(values, dtype=np.int64))

    # -- model ----------------------------------------------------------------------------
    def build(self, doc: str = "") -> ir.Model:
        graph = ir.Graph(
            self.inputs,
            self.outputs,
            nodes=self.tape.nodes,
            initializers=self.tape.initializers,
            opset_imports={"": OPSET, MS_DOMAIN: 1},
            name=self.name,
        )
        return ir.Model(graph, ir_version=10, producer_name="qexport", doc_string=doc)
