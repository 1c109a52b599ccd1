"""int8-dynamic's per-token mode "ffn" (issue 28): per token only on the FFN's output
projection, found in the float graph by the nonlinearity that makes its input. The reference
is the checkpoint's published weight names (BERT `*.output.dense` but not
`*.attention.output.dense`; Qwen3 / Gemma3 `mlp.down_proj`)."""

from __future__ import annotations

import json
import re

import pytest

from qexport.export.api import ExportOptions, build_model, export_onnx
from qexport.export.quantize import QuantOptions
from qexport.export.quantize.dynamic_search import after_activation
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
