"""Activation-aware scales before int4 GPTQ (awq.py): the folds are exact in float, the alpha
search lowers the int4 output error on the activations it measured and on fresh ones from the
same distribution, and an export records what it did."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from qexport.export.api import ExportOptions, build_model, export_onnx, write_tokenizer
from qexport.export.quantize import QuantOptions
from qexport.export.quantize.awq import (
    awq_fold,
    awq_scales,
    collect,
    group_error,
    quantizer,
    search_alpha,
)
from qexport.export.quantize.calibration import scratch_folder
from qexport.export.quantize.check import CheckTexts
from qexport.export.quantize.gptq import gptq, hessian_factor
from qexport.export.quantize.options import make_plan
from qexport.export.quantize.smoothquant import group_targets
from qexport.export.quantize.targets import matmul_targets
from qexport.export.source import resolve
from qexport.runtime import Embedder
from tests.conftest import cosines
from tests.export.conftest import run_embedding

BUDGET = 1 << 30


def _qwen3(tmp_path):  # type: ignore[no-untyped-def]
    src = resolve("random:qwen3-tiny")
    rows = write_tokenizer(src, tmp_path, 512, rows=True)
    assert rows is not None
    model, _, _ = build_model(src, ExportOptions(), 512)
    return model, CheckTexts(rows, "sentence_embedding", "cpu", "fp32")


@pytest.mark.parametrize(("mode", "sites"), [("fold", {"norm", "producer"}),
                                             ("all", {"norm", "producer", "mul"})])  # fmt: skip
def test_awq_fold_is_exact_in_float(tmp_path, feed, mode, sites):
    """Scales from the calibration activations (alpha 0.5 forced, so every allowed group is
    scaled) folded into norms, the producing projection or (mode all) an inserted Mul give the
    float graph's vectors; mode fold never inserts a node."""
    model, texts = _qwen3(tmp_path)
    ir.save(model, tmp_path / "float.onnx")
    nodes = len(list(model.graph))
    search = quantizer("rtn", 4, 32, False, 1.0)
    with scratch_folder(tmp_path) as scratch:
        ref, record = awq_fold(model, scratch, texts, search, mode, BUDGET, alphas=(0.5,))
    folded = {k for k, v in record["folded"].items() if v}
    assert folded == sites, record["folded"]
    assert sum(record["folded"].values()) == record["groups_searched"] > 0
    assert (len(list(model.graph)) == nodes) == (mode == "fold")
    ir.save(model, tmp_path / "scaled.onnx")
    np.testing.assert_allclose(run_embedding(tmp_path / "scaled.onnx", feed),
                               run_embedding(tmp_path / "float.onnx", feed), atol=1e-5)  # fmt: skip
    assert ref.shape == (len(texts.rows), 128) and np.isfinite(ref).all()


def _outlier_activations(rng, rows, k=128):  # type: ignore[no-untyped-def]
    """Correlated activations with a few channels 30x larger than the rest (the outlier
    channels of a transformer's hidden state)."""
    basis = np.random.default_rng(7).standard_normal((16, k))
    x = rng.standard_normal((rows, 16)) @ basis + 0.3 * rng.standard_normal((rows, k))
    gain = np.ones(k)
    gain[np.random.default_rng(8).choice(k, 6, replace=False)] = 30.0
    return (x * gain).astype(np.float32)


@pytest.mark.parametrize("search", ["rtn", "gptq"])
def test_awq_alpha_lowers_the_int4_error_on_fresh_activations(search):
    """The alpha chosen on one sample of outlier-channel activations is not 0, cuts the int4
    (GPTQ-quantized) output error on a fresh sample from the same distribution, and the
    search's own error at that alpha is lower than at alpha 0."""
    rng = np.random.default_rng(0)
    x_cal, x_new = _outlier_activations(rng, 512), _outlier_activations(rng, 4096)
    w = [np.random.default_rng(3).standard_normal((128, 96)).astype(np.float32) * 0.05]
    h = (x_cal.T @ x_cal).astype(np.float32)
    mean_abs = np.abs(x_cal).mean(axis=0)
    alpha, s, errors = search_alpha(w, h, mean_abs, quantizer(search, 4, 32, False, 1.0))
    assert alpha > 0 and errors[int(alpha * 10)] < 0.9 * errors[0], errors

    def final_error(scale: np.ndarray) -> float:
        """GPTQ of diag(s) W from the scaled H, judged on the fresh activations."""
        q = gptq(w[0] * scale[:, None], hessian_factor(h / np.outer(scale, scale), 1.0), 4, 32,
                 symmetric=False)  # fmt: skip
        y = x_new @ w[0]
        return float(np.linalg.norm((x_new / scale) @ q.dequantize() - y) / np.linalg.norm(y))

    assert final_error(s) < 0.9 * final_error(awq_scales(mean_abs, 0.0))


def test_awq_scales_are_normalised_and_keep_dead_channels():
    mean_abs = np.array([0.0, 1.0, 4.0, 16.0])
    s = awq_scales(mean_abs, 0.5)
    assert s[0] == 1.0  # never carried a value
    np.testing.assert_allclose(s[1:], [0.5, 1.0, 2.0], rtol=1e-6)  # sqrt(max * min) = 1
    np.testing.assert_array_equal(awq_scales(mean_abs, 0.0), np.ones(4))


def test_group_error_is_the_output_error_on_the_activations():
    """tr(D^T H D) / tr(W^T H W) from H equals ||X W - (X / s) Q(sW)||^2 / ||X W||^2
    computed on X itself."""
    rng = np.random.default_rng(1)
    x = _outlier_activations(rng, 300, 64)
    w = rng.standard_normal((64, 40)).astype(np.float32)
    s = awq_scales(np.abs(x).mean(axis=0), 0.6)
    quantize = quantizer("rtn", 4, 32, True, 1.0)
    q = quantize(w * s[:, None], np.eye(64, dtype=np.float32), s).dequantize()
    y = x.astype(np.float64) @ w
    direct = np.sum(((x / s) @ q - y) ** 2) / np.sum(y**2)
    got = group_error([w], x.T.astype(np.float64) @ x, s, quantize)
    np.testing.assert_allclose(got, direct, rtol=1e-4)


def test_collect_gives_each_group_its_hessian_and_mean_abs(tmp_path):
    model, texts = _qwen3(tmp_path)
    groups = group_targets(matmul_targets(model.graph))
    with scratch_folder(tmp_path) as scratch:
        ref, stats = collect(model, scratch, texts, groups, embed=True)
    assert ref is not None and len(stats) == len(groups)
    for g in groups:
        h, mean_abs = stats[g.activation.name or ""]
        k = g.targets[0].k
        assert h.shape == (k, k) and mean_abs.shape == (k,)
        assert (mean_abs > 0).all() and np.allclose(h, h.T, rtol=1e-4, atol=1e-3)
        # mean |x| <= rms(x) per channel: sqrt(diag(H) / tokens) bounds it (Jensen)
        tokens = sum(len(r) for r in texts.rows.ids)
        assert (mean_abs <= np.sqrt(np.diag(h) / tokens) * (1 + 1e-4)).all()


def test_int4_export_records_awq_and_holds_its_bar(tmp_path):
    """An int4 export with AWQ scales (mode all) writes its alpha per group and where each
    division went into the manifest, and the artifact stays within the int4 bar of the fp32
    artifact."""
    texts = ["a short text", "Ein zweiter, etwas längerer Satz über das Wetter.", "数据库"]
    fp32 = tmp_path / "fp32"
    export_onnx("random:qwen3-tiny", fp32, ExportOptions(progress=False))
    out = tmp_path / "int4"
    opts = ExportOptions(precision="int4", progress=False, quant=QuantOptions(awq="all"))
    export_onnx("random:qwen3-tiny", out, opts)
    record = json.loads((out / "qexport.json").read_text())["quantization"]["awq"]
    assert record["mode"] == "all" and record["search"] == "rtn"
    assert record["groups_searched"] == len(record["per_group"]) == 8  # 4 per layer
    for name, g in record["per_group"].items():
        assert 0.0 <= g["alpha"] <= 1.0 and g["error_vs_unscaled"] <= 1.0, name
        assert (g["folded_into"] is None) == (g["alpha"] == 0.0), name
    ours = Embedder(out, device="cpu").embed(texts)
    assert cosines(ours, Embedder(fp32, device="cpu").embed(texts)).min() >= 0.98


@pytest.mark.parametrize(
    ("precision", "opts", "message"),
    [
        ("int4", QuantOptions(awq="sometimes"), "awq must be one of off, fold, all"),
        ("int4", QuantOptions(awq="all", method="rtn"), "awq scales are made for --method gptq"),
        ("int8-dynamic", QuantOptions(awq="fold"), "not int8-dynamic"),
    ],
)
def test_bad_awq_options_are_refused(precision, opts, message):
    with pytest.raises(ValueError, match=message):
        make_plan(precision, "cpu", opts)


def test_awq_is_off_unless_asked():
    assert make_plan("int4", "cpu", QuantOptions()).awq == "off"
    assert make_plan("int4", "cpu", QuantOptions(awq="fold")).awq == "fold"
    assert make_plan("int8", "cpu", QuantOptions(method="rtn")).awq == "off"
