"""int8-dynamic's per-token mode "ffn" (issue 28): per token only on the FFN's output
projection, found in the float graph by the nonlinearity that makes its input. The reference
is the checkpoint's published weight names (BERT `*.output.dense` but not
`*.attention.output.dense`; Qwen3 / Gemma3 `mlp.down_proj`)."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx_ir as ir
import pytest

from qexport.export.api import ExportOptions, build_model, export_onnx
from qexport.export.graph import OPSET
from qexport.export.quantize import QuantOptions
from qexport.export.quantize.dynamic import apply_dynamic_int8
from qexport.export.quantize.dynamic_search import LOWER_BOUNDS, after_activation, lower_bound
from qexport.export.quantize.smoothquant import group_targets
from qexport.export.quantize.targets import matmul_targets
from qexport.export.source import resolve

FFN_OUT = re.compile(r"(layer\.\d+\.output\.dense|mlp\.down_proj)\.weight")


def _ffn_out_groups(model):  # type: ignore[no-untyped-def]
    groups = group_targets(matmul_targets(model.graph))
    picked = {t.name for g in groups if after_activation(g.activation) for t in g.targets}
    return picked, {t.name for g in groups for t in g.targets}


@pytest.mark.parametrize("spec", ["random:qwen3-tiny", "minilm", "random:embeddinggemma-tiny"])
def test_after_activation_picks_the_ffn_output_projections(spec, request):
    model_spec = str(request.getfixturevalue("minilm_dir")) if spec == "minilm" else spec
    model, _, _ = build_model(resolve(model_spec), ExportOptions(), 256)
    picked, every = _ffn_out_groups(model)
    want = {n for n in every if FFN_OUT.search(n)}
    layers = sum(1 for n in every if "down_proj" in n or re.search(r"layer\.\d+\.output\.d", n))
    assert want and len(want) == layers  # one per layer, named as published
    assert picked == want, sorted(picked ^ want)


def test_ffn_mode_export_records_and_scales_only_those(tmp_path):
    """The exported artifact scales per token exactly the FFN output projections (one ReduceMax
    per layer) and passes the exporter's own check; per tensor elsewhere."""
    import onnx

    out = tmp_path / "ffn"
    opts = ExportOptions(
        precision="int8-dynamic", progress=False, quant=QuantOptions(per_token="ffn")
    )
    export_onnx("random:qwen3-tiny", out, opts)
    q = json.loads((out / "qexport.json").read_text())["quantization"]
    per_token = q["per_token_projections"]
    assert per_token and all("mlp.down_proj" in n for n in per_token)
    assert q["matmuls_quantized"] > len(per_token)  # the rest is quantized, per tensor
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert sum(n.op_type == "ReduceMax" for n in graph.node) == len(per_token)


def test_unknown_per_token_mode_is_refused_before_any_work(tmp_path, monkeypatch):
    """A bad QuantOptions.per_token is refused by the option check, before the checkpoint is
    resolved or a graph built, and leaves no output folder."""
    import qexport.export.api as api

    def never(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("resolved a checkpoint for options that were never valid")

    monkeypatch.setattr(api, "resolve", never)
    out = tmp_path / "bad"
    opts = ExportOptions(
        precision="int8-dynamic", progress=False, quant=QuantOptions(per_token="some")
    )
    with pytest.raises(
        ValueError, match="per_token must be one of none, auto, ffn, all, got 'some'"
    ):
        export_onnx("random:qwen3-tiny", out, opts)
    assert not out.exists()


def _gelu_then_projection(rng: np.random.Generator) -> ir.Model:
    """x [n, 64] -> BiasGelu(x, b) -> MatMul(W [64, 16]) -> y: an FFN output projection."""
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(rng.normal(size=64).astype(np.float32), "b")
    w = numpy_helper.from_array(rng.normal(size=(64, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("BiasGelu", ["x", "b"], ["h"], domain="com.microsoft"),
         helper.make_node("MatMul", ["h", "w"], ["y"])],
        "ffn_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [b, w],
    )  # fmt: skip
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
    )
    return ir.serde.deserialize_model(proto)


def test_per_token_scale_without_abs_after_gelu(tmp_path):
    """GELU's output is >= -0.17, so its per-token scale is max X floored at that bound (no Abs
    pass): the same r, hence the same output, as max |X| wherever a token's max is above the
    bound; a token whose GELU outputs are all negative (r = the floor) still matches the float
    result; the graph has no Abs."""
    import onnxruntime as ort
    from scipy.special import erf

    rng = np.random.default_rng(5)
    x = rng.normal(scale=2.0, size=(12, 64)).astype(np.float32)
    x[3] = -np.abs(x[3]) - 0.5  # every GELU output of token 3 in [-0.17, 0)
    outputs, abs_nodes = {}, {}
    for form in ("abs", "bounded"):
        model = _gelu_then_projection(rng=np.random.default_rng(6))
        (target,) = matmul_targets(model.graph)
        bound = lower_bound(target.activation, None) if form == "bounded" else None
        assert form == "abs" or bound == LOWER_BOUNDS["BiasGelu"]
        apply_dynamic_int8(model, [target], per_token={target.name: bound})
        path = tmp_path / f"{form}.onnx"
        ir.save(model, path)
        abs_nodes[form] = sum(n.op_type == "Abs" for n in model.graph)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs[form] = sess.run(None, {"x": x})[0]
    assert abs_nodes == {"abs": 1, "bounded": 0}
    ref = _gelu_then_projection(np.random.default_rng(6))
    b, w = (
        v.const_value.numpy() for v in (ref.graph.initializers["b"], ref.graph.initializers["w"])
    )  # type: ignore[union-attr]
    h = (x + b) * 0.5 * (1.0 + erf((x + b) / np.sqrt(2.0)))
    want = h @ w
    high = np.ones(len(x), bool)
    high[3] = False
    assert (h[high].max(axis=1) > LOWER_BOUNDS["BiasGelu"]).all()
    np.testing.assert_array_equal(outputs["bounded"][high], outputs["abs"][high])
    for form in outputs:  # per-token int8: each row within 2% of the float row
        err = np.linalg.norm(outputs[form] - want, axis=1) / np.linalg.norm(want, axis=1)
        assert err.max() < 0.02, (form, err)


def test_attention_context_is_not_smoothed(minilm_dir, tmp_path):
    """The attention context's projection (BERT attention.output.dense) gets no SmoothQuant
    Mul; the LayerNorm outputs feeding q/k/v and the FFN do (explicit Muls: BERT is post-LN)."""
    out = tmp_path / "minilm"
    opts = ExportOptions(precision="int8-dynamic", progress=False)
    export_onnx(str(minilm_dir), out, opts)
    q = json.loads((out / "qexport.json").read_text())["quantization"]
    assert q["per_token"] == "ffn"  # the bert family's default
    model, _, _ = build_model(resolve(str(minilm_dir)), ExportOptions(), 256)
    by_group = {
        g.activation.name: g.targets[0].name for g in group_targets(matmul_targets(model.graph))
    }
    alphas = {by_group[k]: a for k, a in q["smoothquant"]["alpha_per_group"].items()}
    assert len(alphas) == 24
    for name, alpha in alphas.items():
        if "attention.output" in name or re.search(r"layer\.\d+\.output\.dense", name):
            assert alpha is None, name
    assert sum(a is not None for a in alphas.values()) == q["smoothquant"]["folded"]["mul"] > 0


def test_every_family_default_activation_scale_is_a_known_mode():
    """Every family's int8_dynamic_per_token is None or one of PER_TOKEN_MODES
    (a typo in a spec would otherwise surface only at the end of a calibration run)."""
    from qexport.export.families import SPECS
    from qexport.export.quantize.options import PER_TOKEN_MODES

    for spec in SPECS.values():
        assert spec.int8_dynamic_per_token in (None, *PER_TOKEN_MODES), spec.name
    assert SPECS["bert"].int8_dynamic_per_token == "ffn"
