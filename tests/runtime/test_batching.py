"""Token-budget batching and the Embedder pipeline: the plan covers every row once within
the budget; packed, windowed, streamed and I/O-bound runs equal the PyTorch reference and
one-text-at-a-time runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from qexport.runtime import Embedder, embedder
from qexport.runtime.batching import padding_ratio, plan_batches
from tests.conftest import cosines
from tests.texts import MIXED


@pytest.mark.parametrize("budget", [1, 7, 64, 1000, 16384])
@pytest.mark.parametrize("max_rows", [1, 3, 32])
def test_plan_covers_every_row_once_within_budget(budget, max_rows):
    rng = np.random.default_rng(budget * 31 + max_rows)
    lengths = rng.integers(1, 300, size=257).tolist()
    batches = plan_batches(lengths, budget, max_rows)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_rows
        padded = len(b) * max(lengths[i] for i in b)
        assert len(b) == 1 or padded <= budget, (b, padded)


def test_plan_packs_more_short_rows_and_wastes_little_padding():
    rng = np.random.default_rng(0)
    # mixed corpus: mostly short texts, a tail of long ones
    lengths = np.concatenate([rng.integers(5, 40, 900), rng.integers(300, 2000, 100)])
    rng.shuffle(lengths)
    planned = plan_batches(lengths.tolist(), 16384, 10_000)
    fixed = [np.arange(i, min(i + 32, len(lengths))) for i in range(0, len(lengths), 32)]
    # numpy reference of the padded size of the fixed, unsorted plan
    fixed_padded = sum(len(b) * lengths[b].max() for b in fixed) / lengths.sum()
    assert padding_ratio(lengths, fixed) == pytest.approx(fixed_padded)
    assert padding_ratio(lengths, planned) < 1.2 and fixed_padded > 5
    short_rows = max(len(b) for b in planned)
    long_rows = len(planned[0])  # longest first
    assert lengths[planned[0]].max() == lengths.max()
    assert short_rows > 10 * long_rows


def test_bad_budget(tiny_artifact):
    for bad in (0, -3, True, 2.5, "4096"):
        with pytest.raises(ValueError, match="max_batch_tokens must be >= 1"):
            Embedder(tiny_artifact, device="cpu", max_batch_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        plan_batches([1, 2], 10, 0)


def test_default_budget_follows_the_device(tiny_artifact):
    """No budget named: 4,096 padded tokens per pass on CPU (faster and lighter there than
    16,384, docs/benchmarks.md); a named one is kept. The batches obey it."""
    from qexport.runtime.batching import CPU_MAX_BATCH_TOKENS, default_max_batch_tokens

    emb = Embedder(tiny_artifact, device="cpu")
    assert emb.providers[0] == "CPUExecutionProvider"
    assert emb.max_batch_tokens == CPU_MAX_BATCH_TOKENS == default_max_batch_tokens(False) == 4096
    assert default_max_batch_tokens(True) == 16384
    assert Embedder(tiny_artifact, device="cpu", max_batch_tokens=777).max_batch_tokens == 777
    texts = [f"text {i} " + "word " * 200 for i in range(64)]
    prepared = emb.prepare(emb.tokenize(texts)[0], batch_size=1000)
    widths = [feed["input_ids"].size for _, feed in prepared.batches]
    assert len(widths) > 1 and max(widths) <= 4096


@pytest.fixture(scope="module")
def reference_vectors(tiny_reference):
    return tiny_reference.embed(MIXED, batch_size=1)


@pytest.mark.parametrize("budget", [1, 300, 16384])
def test_token_budget_results_match_pytorch(tiny_artifact, reference_vectors, budget):
    emb = Embedder(tiny_artifact, device="cpu", max_batch_tokens=budget)
    ours = emb.embed(MIXED, batch_size=len(MIXED))
    assert cosines(ours, reference_vectors).min() >= 0.99999
    single = np.concatenate([emb.embed([t]) for t in MIXED])
    assert np.abs(ours - single).max() <= 1e-5


def test_io_binding_path_equals_plain_run(tiny_artifact):
    plain = Embedder(tiny_artifact, device="cpu", io_binding=False)
    bound = Embedder(tiny_artifact, device="cpu", io_binding=True)
    assert bound.io_binding and not bound.on_cuda
    np.testing.assert_array_equal(bound.embed(MIXED), plain.embed(MIXED))


def test_windowed_pipeline_and_chunks_keep_input_order(tiny_artifact, monkeypatch):
    emb = Embedder(tiny_artifact, device="cpu", max_batch_tokens=200)
    texts = [MIXED[i % len(MIXED)] + f" #{i}" for i in range(37)]
    whole = emb.embed(texts, batch_size=64)  # one window
    monkeypatch.setattr(embedder, "WINDOW", 5)  # 8 windows, tokenised ahead in a thread
    windowed = emb.embed(texts, batch_size=64)
    assert np.abs(windowed - whole).max() <= 1e-5
    single = np.concatenate([emb.embed([t]) for t in texts])
    assert np.abs(whole - single).max() <= 1e-5
    chunks = [texts[i : i + 6] for i in range(0, len(texts), 6)]
    streamed = list(emb.embed_chunks(iter(chunks), dim=64))
    assert [len(s) for s in streamed] == [len(c) for c in chunks]
    np.testing.assert_allclose(np.concatenate(streamed), emb.embed(texts, dim=64), atol=1e-5)


def test_errors_in_the_tokenising_thread_reach_the_caller(tiny_artifact):
    emb = Embedder(tiny_artifact, device="cpu")
    gen = emb.embed_chunks([["fine"], ["ok", 3]])
    assert next(gen).shape == (1, 128)
    with pytest.raises(ValueError, match=r"texts\[1\] is int, not str"):
        next(gen)


def test_truncation_warns_once_with_totals(tiny_artifact, monkeypatch):
    emb = Embedder(tiny_artifact, device="cpu")
    monkeypatch.setattr(emb.encoder, "max_length", 8)
    monkeypatch.setattr(embedder, "WINDOW", 2)
    texts = ["a" * 20, "short", "b" * 30, "c" * 9]
    lengths = [len(x) for x in emb.encoder.tokenizer.encode_batch(texts)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb.embed(texts)
    msgs = [str(w.message) for w in caught if "truncated" in str(w.message)]
    want_dropped = sum(max(0, n - 8) for n in lengths)
    assert msgs == [
        f"3 text(s) longer than max_length 8 were truncated: {want_dropped} token(s) dropped"
    ]


def test_padding_cap_bounds_waste_per_batch():
    from qexport.runtime.batching import MAX_PADDING_FRACTION, padding_ratio, plan_batches

    rng = np.random.default_rng(3)
    lens = [int(x) for x in rng.integers(7, 257, size=400)]
    plan = plan_batches(lens, 16384, 256)
    arr = np.asarray(lens)
    for b in plan:  # every batch of 2+ rows keeps padding within the cap
        if len(b) > 1:
            assert arr[b].sum() >= (1 - MAX_PADDING_FRACTION) * len(b) * arr[b].max()
    assert padding_ratio(lens, plan) <= 1 / (1 - MAX_PADDING_FRACTION)
    assert sorted(np.concatenate(plan).tolist()) == list(range(400))
