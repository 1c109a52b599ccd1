"""Weight conversion fast paths are bit-exact against ml_dtypes / numpy."""

from __future__ import annotations

import numpy as np

from qexport.export.random import REGISTRY, random_weights
from qexport.export.weights import BF16, bf16_to_fp32, convert, fp32_to_bf16


def test_bf16_round_trip_bit_exact():
    x = np.random.default_rng(0).standard_normal(200_000).astype(np.float32) * 3
    x[:5] = [0.0, -0.0, 1e-40, 3.0e38, -65504.0]
    ours = fp32_to_bf16(x)
    assert np.array_equal(ours.view(np.uint16), x.astype(BF16).view(np.uint16))
    assert np.array_equal(bf16_to_fp32(ours), ours.astype(np.float32))
    assert np.array_equal(
        convert(ours, np.dtype(np.float16)), ours.astype(np.float32).astype(np.float16)
    )


def test_random_weights_are_deterministic_per_tensor():
    model = REGISTRY["qwen3-tiny"]
    a, b = random_weights(model), random_weights(model)
    names = a.keys()
    # any tensor alone, in any order, gives the same bytes
    for name in (names[-1], names[0], names[5]):
        assert np.array_equal(a.load(name).view(np.uint16), b.load(name).view(np.uint16))
    assert a.load(names[1]).dtype == BF16
