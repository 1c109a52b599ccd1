"""Quantization on random Qwen3 models: the passes against onnxruntime's own quantizers, the
fidelity bars against the fp32 PyTorch reference (transformers), manifest, refusal, CLI."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from qexport.cli import main
from qexport.export.api import ExportOptions, build_model, export_onnx, write_tokenizer
from qexport.export.quantize import (
    BARS,  # the one table: quantize, validate, CLI help
    MAX_WIDER_FRACTION,
    QuantizationRefused,
    QuantOptions,
)
from qexport.export.quantize.calibration import Runner, load_texts
from qexport.export.quantize.dynamic import quantize_per_channel
from qexport.export.quantize.matmul_nbits import apply_matmul_nbits
from qexport.export.quantize.smoothquant import apply_smoothing, group_targets, smoothing_factors
from qexport.export.quantize.targets import matmul_targets
from qexport.export.source import resolve
from qexport.runtime import Embedder
from qexport.texts import BUILTIN_TEXTS
from qexport.validate.reference import TorchReference
from tests.conftest import cosines
from tests.export.conftest import run_embedding

MAX_LENGTH = 256
# the built-in texts that fit MAX_LENGTH byte tokens (the reference must not truncate)
TEXTS = [t for t in BUILTIN_TEXTS if len(t.encode()) < MAX_LENGTH - 8]


@pytest.mark.parametrize(("bits", "block", "level"), [(8, 128, 4), (4, 32, 0)])
def test_nbits_pass_equals_matmulnbitsquantizer(tmp_path, feed, bits, block, level):
    """The lazy pass writes byte-identical weights to MatMulNBitsQuantizer run on the saved
    fp32 graph, and the two graphs give identical outputs."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    src = resolve("random:qwen3-tiny")
    model, _, _ = build_model(src, ExportOptions(), 256)
    ir.save(model, tmp_path / "float.onnx")
    info = apply_matmul_nbits(model, bits=bits, block_size=block, accuracy_level=level)
    assert info["matmuls_quantized"] == 14  # 7 projections x 2 layers
    ir.save(model, tmp_path / "ours.onnx")
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=level, bits=bits
    )
    theirs = MatMulNBitsQuantizer(onnx.load(tmp_path / "float.onnx"), algo_config=config)
    theirs.process()
    theirs.model.save_model_to_file(str(tmp_path / "theirs.onnx"))

    def inits(path):  # type: ignore[no-untyped-def]
        return {
            i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
        }

    a, b = inits(tmp_path / "ours.onnx"), inits(tmp_path / "theirs.onnx")
    assert set(a) == set(b)
    quantized = [k for k in a if k.endswith((f"_Q{bits}", "_scales"))]
    assert len(quantized) == 28
    for k in quantized:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ours.onnx")).graph.node}
    assert "MatMul" not in ops and {"MatMulNBits", "Gather", "GroupQueryAttention"} <= ops
    out_float, out_ours, out_theirs = (
        run_embedding(tmp_path / f, feed) for f in ("float.onnx", "ours.onnx", "theirs.onnx")
    )
    np.testing.assert_array_equal(out_ours, out_theirs)
    assert not np.allclose(out_ours, out_float, atol=1e-6)  # it did quantize


def test_per_channel_int8_equals_quant_utils():
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    w = np.random.default_rng(1).normal(size=(96, 40)).astype(np.float32)
    w[:, 7] = 0.0  # an all-zero column
    w[3, 5] = 40.0  # an outlier
    q, scale = quantize_per_channel(w)
    for j in range(w.shape[1]):
        zp, s, qd = quantize_data(w[:, j], TensorProto.INT8, True)
        assert zp == 0 and np.float32(s) == scale[j]
        np.testing.assert_array_equal(qd, q[:, j])


def test_smoothing_is_exact_in_float(tmp_path, feed):
    """Folding X/s into norms, producers or an inserted Mul and diag(s) into W changes
    nothing in float, and all three folds occur on Qwen3."""
    src = resolve("random:qwen3-tiny")
    model, _, _ = build_model(src, ExportOptions(), 256)
    ir.save(model, tmp_path / "float.onnx")
    targets = matmul_targets(model.graph)
    rng = np.random.default_rng(2)
    where = []
    for g in group_targets(targets):
        k = g.targets[0].k
        w = np.concatenate([t.load() for t in g.targets], axis=1)
        s = smoothing_factors(w, rng.uniform(0.05, 20.0, size=k), 0.5)
        assert not np.allclose(s, 1.0)
        where.append(apply_smoothing(model.graph, g, s, targets))
    assert sorted(set(where)) == ["mul", "norm", "producer"], where
    ir.save(model, tmp_path / "smoothed.onnx")
    a, b = (
        run_embedding(tmp_path / "float.onnx", feed),
        run_embedding(tmp_path / "smoothed.onnx", feed),
    )
    np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.fixture(scope="module")
def references():  # type: ignore[no-untyped-def]
    return {
        m: TorchReference(m, max_length=MAX_LENGTH).embed(TEXTS)
        for m in ("random:qwen3-tiny", "random:qwen3-stress")
    }


@pytest.mark.parametrize("model", ["random:qwen3-tiny", "random:qwen3-stress"])
@pytest.mark.parametrize("precision", ["int8", "int4", "int8-dynamic"])
def test_fidelity_vs_pytorch(tmp_path, references, model, precision):
    out = tmp_path / "q"
    manifest = export_onnx(
        model,
        out,
        ExportOptions(
            precision=precision, max_length=MAX_LENGTH, progress=False, quant=QuantOptions()
        ),
    )
    ours = Embedder(out, device="cpu").embed(TEXTS)
    cos = cosines(ours, references[model])
    assert np.isfinite(ours).all()
    assert cos.min() >= BARS[precision], (precision, cos.min())
    q = manifest.quantization
    assert q is not None and q["base_precision"] == "fp32"
    assert q["check"]["min_cosine"] >= BARS[precision]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert "MatMul" not in ops  # every projection quantized on these models
    if precision == "int8-dynamic":
        assert q["method"] == "DynamicQuantizeMatMul" and ops.count("DynamicQuantizeMatMul") > 0
    else:
        assert q["method"] == "MatMulNBits"
        assert q["bits"] == (8 if precision == "int8" else 4)
        assert q["block_size"] == 32
        assert q["accuracy_level"] == 4
        # bytes per projection weight: int8 1 + 4/32 (fp32 scales on the CPU base), about
        # half of fp16; int4 0.5 + 4/32 + 0.5/32 (asymmetric), about a third, plus at most
        # MAX_WIDER_FRACTION of the weights in int8 (1 + 4/32)
        cfg = resolve(model).config
        h, f, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
        q_dim, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
        params = cfg["num_hidden_layers"] * (2 * h * q_dim + 2 * h * kv + 3 * h * f)
        per_weight = q["quantized_weight_bytes"] / params
        if precision == "int8":
            assert q["weights"] == "round-to-nearest" and q["symmetric"] is True
            assert per_weight == pytest.approx(1 + 4 / 32, rel=0.02)
        else:
            assert q["weights"] == "gptq" and q["symmetric"] is False
            int4 = 0.5 + 4 / 32 + 0.5 / 32
            wider = MAX_WIDER_FRACTION * (1 + 4 / 32 - int4)
            assert int4 * 0.98 <= per_weight <= (int4 + wider) * 1.02, per_weight
    saved = json.loads((out / "qexport.json").read_text())
    assert saved["quantization"]["check"]["min_cosine"] == q["check"]["min_cosine"]


@pytest.mark.parametrize(
    ("precision", "bar", "message"),
    [
        # int8-dynamic's search measures candidates before anything is written
        ("int8-dynamic", 0.999999, r"min cosine 0\.9\d+ .*bar 0\.999999"),
        # int8 round-to-nearest is measured after the artifact is written (verify_quantized)
        (
            "int8",
            0.9999999,
            r"int8 refused: min cosine 0\.9\d+ vs the float graph on the check texts is "
            r"below the bar 0\.9999999",
        ),
    ],
)
def test_export_refused_below_its_bar(tmp_path, precision, bar, message):
    """With a bar the calibration cannot reach, the export refuses, names the measured
    cosine and the bar, and leaves nothing: no artifact, no staging or calibration folders."""
    out = tmp_path / "refused"
    calib = tmp_path.parent / f"{tmp_path.name}-calib.txt"  # outside tmp_path (checked empty)
    calib.write_text("Hello world\nThe capital of China is Beijing.\nLe chat est sur le tapis.\n")
    opts = ExportOptions(
        precision=precision,
        max_length=64,
        progress=False,
        quant=QuantOptions(min_cosine=bar, calibration=calib),
    )
    with pytest.raises(QuantizationRefused, match=message):
        export_onnx("random:qwen3-tiny", out, opts)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_int4_widens_then_refuses_below_its_bar(tmp_path, capsys):
    """int4 that cannot reach an (unreachable) bar tries int8 for the worst projections, up to
    MAX_WIDER_FRACTION of the weights, then refuses naming the cosine; nothing is written."""
    out = tmp_path / "int4"
    code = main(
        ["onnx", "random:qwen3-tiny", "-o", str(out), "--precision", "int4",
         "--max-length", "128", "--min-cosine", "0.9999999"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.search(
        r"int4 refused: min cosine 0\.9\d+ .* with \d+ projections in int8 .*bar 0\.9999999", err[0]
    )
    assert not out.exists()


def test_cli_quantized_export(tmp_path, capsys):
    texts = tmp_path / "calib.txt"
    texts.write_text("first calibration text\n\nsecond one, a little longer\nтретий\n")
    out = tmp_path / "int8"
    code = main(
        ["-q", "onnx", "random:qwen3-tiny", "-o", str(out), "--precision", "int8",
         "--block-size", "64", "--accuracy-level", "0", "--calibration", str(texts),
         "--max-length", "256"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "MB)" in printed and "min cosine" in printed
    q = json.loads((out / "qexport.json").read_text())["quantization"]
    assert (q["bits"], q["block_size"], q["accuracy_level"]) == (8, 64, 0)
    assert q["check"]["source"] == "calib.txt" and q["check"]["texts"] == 3
    assert load_texts(texts) == ["first calibration text", "second one, a little longer", "третий"]


def test_cli_int4_rtn_defaults_to_symmetric(tmp_path):
    """int4's default zero points come with gptq; --method rtn alone must not be refused."""
    out = tmp_path / "int4"
    code = main(
        ["-q", "onnx", "random:qwen3-tiny", "-o", str(out), "--precision", "int4",
         "--method", "rtn", "--max-length", "256", "--no-check"]
    )  # fmt: skip
    assert code == 0
    q = json.loads((out / "qexport.json").read_text())["quantization"]
    assert (q["weights"], q["bits"], q["symmetric"]) == ("round-to-nearest", 4, True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8-dynamic", "--device", "cuda"], "CPU only"),
        (["--precision", "int4", "--block-size", "100"], "--block-size"),
        (["--precision", "int8", "--calibration", "/nonexistent/texts.txt"], "does not exist"),
        (["--precision", "int8", "--accuracy-level", "7"], "accuracy-level"),
        (["--precision", "int4", "--min-cosine", "1.5"], "--min-cosine"),
        (["--precision", "int4", "--method", "rtn", "--zero-points", "asymmetric"], "gptq"),
    ],
)
def test_cli_bad_quantization_args(tmp_path, capsys, args, message):
    code = main(["onnx", "random:qwen3-tiny", "-o", str(tmp_path / "x"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_empty_calibration_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="has no texts"):
        load_texts(empty)


def test_batches_cover_every_text_once(tmp_path):
    src = resolve("random:qwen3-tiny")
    rows = write_tokenizer(src, tmp_path, 512, rows=True)
    assert rows is not None and len(rows) == len(BUILTIN_TEXTS)
    model, _, _ = build_model(src, ExportOptions(), 512)
    ir.save(model, tmp_path / "model.onnx")
    runner = Runner(tmp_path / "model.onnx", "cpu", "fp32", "sentence_embedding", rows)
    batches = runner.batches()
    idx = np.concatenate([i for i, _ in batches])
    assert sorted(idx.tolist()) == list(range(len(BUILTIN_TEXTS)))
    for _, f in batches:
        assert f["input_ids"].shape == f["attention_mask"].shape
