"""The optimized Qwen3 graph: op census, linear memory in sequence length, fp16 / bf16 dtype
flow, the fp16 overflow stress model, and 32k-token parity with transformers."""

from __future__ import annotations

import collections
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qexport.export.api import ExportOptions, export_onnx
from qexport.runtime import Embedder
from qexport.runtime.session import DeviceError
from qexport.validate.reference import TorchReference, last_token_pool
from tests.conftest import cosines
from tests.texts import MIXED

LAYERS = 2  # random:qwen3-tiny


def census(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_op_census(tiny_artifact):
    ops = census(tiny_artifact / "model.onnx")
    assert ops["GroupQueryAttention"] == LAYERS  # exactly one attention node per layer
    assert "Softmax" not in ops and "MultiHeadAttention" not in ops and "Attention" not in ops
    # one norm node per norm: input + post-attention + q_norm + k_norm per layer, final norm
    assert (
        ops["SimplifiedLayerNormalization"] + ops["SkipSimplifiedLayerNormalization"]
        == 4 * LAYERS + 1
    )
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * LAYERS  # residual adds are fused
    assert ops["MatMul"] == 7 * LAYERS  # q k v o gate up down, plain MatMul for quantizers
    assert "Pow" not in ops and "ReduceMean" not in ops  # no unfused RMSNorm left
    assert "Cast" not in ops or all(  # fp32 graph: only the mask/length casts
        n.attribute[0].i in (onnx.TensorProto.INT32, onnx.TensorProto.FLOAT)
        for n in onnx.load(str(tiny_artifact / "model.onnx")).graph.node
        if n.op_type == "Cast"
    )


def test_present_kv_freed_after_their_layer(tiny_artifact):
    """GroupQueryAttention's present K/V (unused by an encoder, but the CPU flash kernel needs
    them) must have a consumer, or onnxruntime keeps every layer's pair until the run ends:
    each layer's pair feeds the next layer's total_sequence_length through Shape nodes."""
    graph = onnx.load(str(tiny_artifact / "model.onnx")).graph
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == LAYERS
    for layer, nxt in itertools.pairwise(gqa):
        for present in layer.output[1:3]:
            assert [n.op_type for n in consumers[present]] == ["Shape"], present
            assert [a.i for a in consumers[present][0].attribute if a.name == "start"] == [2]
        # walk the next layer's total_sequence_length input back to this layer's presents
        producers = {o: n for n in graph.node for o in n.output}
        seen, todo = set(), [nxt.input[6]]
        while todo:
            name = todo.pop()
            if name in producers and name not in seen:
                seen.add(name)
                todo.extend(producers[name].input)
        assert set(layer.output[1:3]) <= seen
    assert not any(consumers[o] for o in gqa[-1].output[1:3])  # last layer: nothing to feed


def _all_shapes(model_path: Path, ids: np.ndarray, mask: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Run the graph with every intermediate value as an output; return their shapes."""
    model = onnx.load(str(model_path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {"input_ids": ids, "attention_mask": mask})
    return {n: np.shape(v) for n, v in zip(names, values, strict=True)}


def test_no_tensor_has_two_sequence_axes(tiny_artifact):
    seq = 37  # no other dimension of the tiny model is 37
    ids = np.full((3, seq), 65, dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 20:] = 0
    shapes = _all_shapes(tiny_artifact / "model.onnx", ids, mask)
    assert len(shapes) > 50
    offenders = {n: s for n, s in shapes.items() if list(s).count(seq) >= 2}
    assert not offenders, offenders


def test_fp16_dtype_flow_and_parity(tmp_path, tiny_reference):
    out = tmp_path / "fp16"
    export_onnx("random:qwen3-tiny", out, ExportOptions(precision="fp16", progress=False))
    model = onnx.load(str(out / "model.onnx"))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.INT64] * 2
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert inits["layers.0.mlp.down_proj.weight"] == onnx.TensorProto.FLOAT16
    assert inits["layers.0.post_attention_layernorm.weight"] == onnx.TensorProto.FLOAT  # fp32 norms
    ours = Embedder(out, device="cpu").embed(MIXED)
    assert cosines(ours, tiny_reference.embed(MIXED)).min() >= 0.999


def test_fp16_stress_model_stays_finite_and_accurate(tmp_path):
    ref = TorchReference("random:qwen3-stress")
    batch = ref.tokenize(MIXED[:3])
    with torch.no_grad():
        hidden = ref.model(**batch, output_hidden_states=True).hidden_states
    # the stress is real: a pure fp16 residual stream would overflow (fp16 max 65504)
    assert max(float(h.abs().max()) for h in hidden[1:-1]) > 65504
    out = tmp_path / "stress-fp16"
    export_onnx("random:qwen3-stress", out, ExportOptions(precision="fp16", progress=False))
    ours = Embedder(out, device="cpu").embed(MIXED)
    assert np.isfinite(ours).all()
    cos = cosines(ours, ref.embed(MIXED))
    assert cos.min() >= 0.999, cos


def test_bf16_structure_and_cpu_refusal(tmp_path):
    out = tmp_path / "bf16"
    export_onnx("random:qwen3-tiny", out, ExportOptions(precision="bf16", progress=False))
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    assert inits["layers.1.self_attn.q_proj.weight"] == onnx.TensorProto.BFLOAT16
    assert inits["rope_cos_cache"] == onnx.TensorProto.BFLOAT16
    assert inits["norm.weight"] == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    to_bf16 = sum(1 for n in casts if n.attribute[0].i == onnx.TensorProto.BFLOAT16)
    assert to_bf16 == 2 * LAYERS  # each norm output enters the bf16 matmuls through one Cast
    assert json.loads((out / "qexport.json").read_text())["precision"] == "bf16"
    with pytest.raises(DeviceError, match=r"bf16.*CPU provider cannot run"):
        Embedder(out, device="cpu")


def _run_ort_subprocess(
    model: Path, ids: np.ndarray, mask: np.ndarray, tmp: Path
) -> tuple[np.ndarray, float]:
    np.savez(tmp / "ids.npz", ids=ids, mask=mask)
    script = Path(__file__).with_name("run_ort_subprocess.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(model), str(tmp / "ids.npz"), str(tmp / "emb.npy")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return np.load(tmp / "emb.npy"), json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _reference(ref: TorchReference, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
        hidden = ref.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        return torch.nn.functional.normalize(last_token_pool(hidden, t_mask), dim=1).numpy()


@pytest.mark.slow
def test_32k_tokens_linear_memory(tiny_artifact, tiny_reference, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, size=(1, 32768), dtype=np.int64)
    ids[0, -1] = 256  # <|endoftext|>
    mask = np.ones_like(ids)
    ours, rss = _run_ort_subprocess(tiny_artifact / "model.onnx", ids, mask, tmp_path)
    assert rss < 2048, f"onnxruntime peak RSS {rss:.0f} MB at 32,768 tokens"
    assert cosines(ours, _reference(tiny_reference, ids, mask)).min() >= 0.9999


@pytest.mark.slow
def test_batch_4x8k_mixed_right_padding(tiny_artifact, tiny_reference, tmp_path):
    rng = np.random.default_rng(1)
    lengths = [8192, 5000, 777, 3]
    ids = np.zeros((4, 8192), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(0, 256, size=n)
        ids[i, n - 1] = 256
        mask[i, :n] = 1
    ours, _ = _run_ort_subprocess(tiny_artifact / "model.onnx", ids, mask, tmp_path)
    # reference: each row alone (no padding at all), so padding cannot leak into it
    ref = np.concatenate(
        [
            _reference(tiny_reference, ids[i : i + 1, :n], mask[i : i + 1, :n])
            for i, n in enumerate(lengths)
        ]
    )
    assert cosines(ours, ref).min() >= 0.9999
