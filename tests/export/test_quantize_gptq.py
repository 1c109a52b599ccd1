"""GPTQ and the MatMulNBits packing, against onnxruntime's own quantizer and kernel and
against numpy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qexport.export.quantize.gptq import gptq, hessian_factor, output_error, rtn
from qexport.export.quantize.matmul_nbits import quantize_blockwise


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block", [16, 32, 128])
def test_rtn_packs_exactly_like_onnxruntime(bits, block):
    """Symmetric round-to-nearest: the same bytes and scales as onnxruntime's quantizer,
    K not a multiple of the block included."""
    w = np.random.default_rng(bits + block).standard_normal((200, 48)).astype(np.float32)
    ref_packed, ref_scales = quantize_blockwise(w, bits, block)
    packed, scales, zero_points = rtn(w, bits, block).packed()
    assert zero_points is None
    np.testing.assert_array_equal(packed, ref_packed)
    np.testing.assert_array_equal(scales, ref_scales)


def _matmulnbits(x, q):  # type: ignore[no-untyped-def]
    """Run one com.microsoft.MatMulNBits node on onnxruntime's CPU provider."""
    packed, scales, zero_points = q.packed()
    k, n = q.codes.shape
    inits = [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["X", "B", "scales"]
    if zero_points is not None:
        inits.append(numpy_helper.from_array(zero_points, "zp"))
        inputs.append("zp")
    node = helper.make_node(
        "MatMulNBits", inputs, ["Y"], domain="com.microsoft",
        K=k, N=n, bits=q.bits, block_size=q.block_size,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        inits,
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def _correlated(rng, rows, k, seed=0):  # type: ignore[no-untyped-def]
    """Activations whose channels are correlated (a 16-dimensional subspace plus noise, the
    subspace fixed by `seed`), as a transformer's hidden states are."""
    basis = np.random.default_rng(seed).standard_normal((16, k))
    x = rng.standard_normal((rows, 16)) @ basis + 0.3 * rng.standard_normal((rows, k))
    return x.astype(np.float32)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("bits", "block"), [(4, 32), (4, 128), (8, 32)])
def test_gptq_codes_run_in_matmulnbits(symmetric, bits, block):
    """onnxruntime's kernel, fed our packed codes, scales and zero points, computes
    X @ dequantize(codes) (numpy), K not a multiple of the block included."""
    rng = np.random.default_rng(1)
    k, n = 200, 40
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = _correlated(rng, 256, k)
    q = gptq(w, x.T @ x, bits, block, symmetric=symmetric)
    assert (q.zero_points is None) == symmetric
    expected = x @ q.dequantize()
    got = _matmulnbits(x, q)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_beats_round_to_nearest_on_held_out_activations(symmetric):
    """GPTQ's point: a smaller output error ||X(W - Q(W))|| than rounding each weight, on
    activations it was not fitted on; output_error agrees with the direct computation."""
    rng = np.random.default_rng(2)
    k, n = 256, 64
    w = rng.standard_normal((k, n)).astype(np.float32)
    x_fit, x_test = _correlated(rng, 2048, k), _correlated(rng, 1024, k)
    h = x_fit.T @ x_fit
    q_gptq = gptq(w, h, 4, 32, symmetric=symmetric)
    q_rtn = rtn(w, 4, 32)

    def err(q):  # type: ignore[no-untyped-def]
        d = x_test @ (w - q.dequantize())
        return float(np.sum(d**2) / np.sum((x_test @ w) ** 2))

    assert err(q_gptq) < 0.2 * err(q_rtn), (err(q_gptq), err(q_rtn))
    d = x_fit.astype(np.float64) @ (w - q_gptq.dequantize())
    direct = np.sum(d**2) / np.sum((x_fit.astype(np.float64) @ w) ** 2)
    assert output_error(w, q_gptq, h) == pytest.approx(direct, rel=1e-3)


def test_gptq_rejects_a_hessian_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"H must be \[8, 8\]"):
        gptq(np.ones((8, 4), np.float32), np.eye(7, dtype=np.float32), 4, 16)


def _textbook_gptq(w, h, bits, block, symmetric, damp):  # type: ignore[no-untyped-def]
    """GPTQ as the paper writes it, float64, no lazy blocks: after each column, every later
    column takes its share of the rounding error."""
    from qexport.export.quantize.gptq import _dequantize, _quantize, choose_grid

    k, n = w.shape
    h = h.astype(np.float64).copy()
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    wt = w.T.astype(np.float64)
    codes = np.zeros((n, k), dtype=np.uint8)
    for col in range(k):
        if col % block == 0:
            scale, zp = choose_grid(
                wt[:, col : col + block].astype(np.float32), bits, w.dtype, symmetric
            )
        qc = _quantize(wt[:, col : col + 1], scale, zp, bits)[:, 0]
        codes[:, col] = qc
        err = (wt[:, col] - _dequantize(qc[:, None], scale, zp)[:, 0]) / u[col, col]
        wt[:, col:] -= np.outer(err, u[col, col:])
    return codes.T


@pytest.mark.parametrize("symmetric", [True, False])
def test_blocked_gptq_equals_the_textbook_algorithm(symmetric):
    """The lazy-block / per-quantization-block update order and the float32 factor change
    only rounding: the codes equal the textbook algorithm's (but for a few ties), and the
    factor shared by projections with one input gives the same codes as H itself."""
    rng = np.random.default_rng(3)
    k, n = 300, 48  # K spans 3 lazy blocks, the last one partial
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = _correlated(rng, 1024, k)
    h = x.T @ x
    ours = gptq(w, h, 4, 32, symmetric=symmetric, damp=0.1)
    ref = _textbook_gptq(w, h, 4, 32, symmetric, damp=0.1)
    assert np.mean(ours.codes == ref) > 0.995
    shared = gptq(w, hessian_factor(h, 0.1), 4, 32, symmetric=symmetric)
    np.testing.assert_array_equal(shared.codes, ours.codes)


def test_hessian_factor_is_the_upper_cholesky_of_the_inverse():
    """U upper with U^T U = (H + damping)^-1, as float64's cholesky(inv(H)).T gives it."""
    rng = np.random.default_rng(4)
    k = 600  # above the triangular inverse's 256 leaf: the halving recursion runs
    x = _correlated(rng, 512, k)
    h = x.T @ x
    h[7, :] = h[:, 7] = 0.0  # a dead channel
    f = hessian_factor(h, 0.1)
    h64 = h.astype(np.float64)
    h64[7, 7] = 1.0
    h64[np.diag_indices(k)] += 0.1 * np.mean(np.diag(h64))
    ref = np.linalg.cholesky(np.linalg.inv(h64)).T
    assert f.dead[7] and f.dead.sum() == 1
    assert np.all(np.tril(f.u, -1) == 0)
    np.testing.assert_allclose(f.u, ref, rtol=0, atol=2e-4 * np.abs(ref).max())


def _dynamic_matmul(x, q, scale):  # type: ignore[no-untyped-def]
    """Run one com.microsoft.DynamicQuantizeMatMul node on onnxruntime's CPU provider."""
    k, n = q.shape
    node = helper.make_node("DynamicQuantizeMatMul", ["X", "B", "s"], ["Y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(q, "B"), numpy_helper.from_array(scale, "s")],
    )  # fmt: skip
    model = helper.make_model(
        graph, ir_version=10,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )  # fmt: skip
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def test_gptq_per_channel_int8_beats_round_to_nearest_on_correlated_inputs():
    """Per-channel int8 by GPTQ: codes in [-127, 127], one scale per column, and a smaller
    output error ||X (W - Q(W))|| on correlated calibration activations than plain rounding
    (dynamic.quantize_per_channel, onnxruntime's recipe); onnxruntime's DynamicQuantizeMatMul
    fed the codes computes X @ dequantized W up to its activation rounding."""
    from qexport.export.quantize.dynamic import quantize_per_channel
    from qexport.export.quantize.dynamic_gptq import gptq_per_channel

    rng = np.random.default_rng(3)
    k, n = 192, 64
    mix = rng.standard_normal((k, k)).astype(np.float32) / np.sqrt(k)
    x = (rng.standard_normal((2000, k)) @ (np.eye(k) + 2 * mix)).astype(np.float32)
    x[:, 5] *= 8.0  # an outlier channel
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    q, scale = gptq_per_channel(w, x.T @ x, damp=0.01)
    assert q.dtype == np.int8 and q.shape == (k, n) and scale.shape == (n,)
    assert int(np.abs(q.astype(np.int32)).max()) <= 127
    q_rtn, s_rtn = quantize_per_channel(w)

    def err(codes, s):  # type: ignore[no-untyped-def]
        d = x @ (w - codes.astype(np.float32) * s)
        return float(np.linalg.norm(d) / np.linalg.norm(x @ w))

    assert err(q, scale) < 0.7 * err(q_rtn, s_rtn), (err(q, scale), err(q_rtn, s_rtn))
    got = _dynamic_matmul(x[:64], q, scale)
    want = x[:64] @ (q.astype(np.float32) * scale)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()  # uint8 X, outlier channel
