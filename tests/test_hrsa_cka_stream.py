"""Streaming / batched CKA equals the one-shot per-pair values (docs/hrsa-metrics.md, CKA properties)."""

from __future__ import annotations

import pytest
import torch

from reasoning_embed.hrsa import CKAAccumulator, cka_matrix, linear_cka, linear_cka_gram


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_models(seed=0, n=120, La=4, Lb=3, da=6, db=9, offset=10.0):
    """Two stacks of layers with shared latent structure, large means and different scales."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    Xs = torch.stack([z @ torch.randn(4, da, generator=g, dtype=torch.float64) * (l + 1)
                      + torch.randn(n, da, generator=g, dtype=torch.float64) * 0.5 * l + offset
                      for l in range(La)])
    Ys = torch.stack([z @ torch.randn(4, db, generator=g, dtype=torch.float64)
                      + torch.randn(n, db, generator=g, dtype=torch.float64) * (l + 1) - offset
                      for l in range(Lb)])
    return Xs, Ys


def per_pair(Xs, Ys, debiased, fn=linear_cka):
    return torch.tensor([[fn(x, y, debiased) for y in Ys] for x in Xs], dtype=torch.float64)


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_equals_one_shot_and_gram(debiased):
    Xs, Ys = fake_models()
    acc = CKAAccumulator(debiased=True, compute_dtype=torch.float64)
    for s, e in [(0, 1), (1, 17), (17, 64), (64, 65), (65, 120)]:   # uneven batches, incl. 1 row
        acc.update(Xs[:, s:e], Ys[:, s:e])
    got = acc.compute(debiased=debiased)
    assert acc.n == 120 and got.shape == (4, 3) and got.dtype == torch.float64
    assert torch.allclose(got, per_pair(Xs, Ys, debiased), atol=1e-12, rtol=0)
    assert torch.allclose(got, per_pair(Xs, Ys, debiased, linear_cka_gram), atol=1e-12, rtol=0)
    assert got.min() < 0.9                   # non-trivial values
    # compute() does not consume the state: more rows keep accumulating correctly
    X2, Y2 = fake_models(seed=1)
    acc.update(X2, Y2)
    both = per_pair(torch.cat([Xs, X2], 1), torch.cat([Ys, Y2], 1), debiased)
    assert torch.allclose(acc.compute(debiased=debiased), both, atol=1e-12, rtol=0)


def test_streaming_float32_gemms_with_float64_accumulation():
    Xs, Ys = fake_models(n=300)
    ref = per_pair(Xs, Ys, False)
    acc = CKAAccumulator(debiased=True, compute_dtype=torch.float32, flush_rows=64)
    for s in range(0, 300, 50):
        acc.update(Xs[:, s:s + 50].float(), Ys[:, s:s + 50].float())
    assert torch.allclose(acc.compute(), ref, atol=1e-5, rtol=0)
    assert torch.allclose(acc.compute(debiased=True), per_pair(Xs, Ys, True), atol=1e-4, rtol=0)


def test_streaming_float32_stays_accurate_with_large_means():
    # LLM hidden states have large per-dimension means; float32 sums of raw products would cancel
    # catastrophically, the fixed first-batch shift keeps them small.
    Xs, Ys = fake_models(n=400, offset=3e3)
    Xs, Ys = Xs.float().double(), Ys.float().double()       # the data as float32 can hold it
    acc = CKAAccumulator(debiased=True, compute_dtype=torch.float32, flush_rows=10**9)
    for s in range(0, 400, 100):
        acc.update(Xs[:, s:s + 100].float(), Ys[:, s:s + 100].float())
    assert torch.allclose(acc.compute(), per_pair(Xs, Ys, False), atol=1e-4, rtol=0)
    assert torch.allclose(acc.compute(debiased=True), per_pair(Xs, Ys, True), atol=1e-3, rtol=0)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_per_pair_with_different_layer_counts(debiased):
    Xs, Ys = fake_models(La=5, Lb=2, da=7, db=4)
    ref = per_pair(Xs, Ys, debiased)
    assert torch.allclose(cka_matrix(Xs, Ys, debiased, chunk_size=33), ref, atol=1e-12, rtol=0)
    lists = cka_matrix([x.numpy() for x in Xs], list(Ys), debiased)          # list inputs, numpy too
    assert torch.allclose(lists, ref, atol=1e-12, rtol=0)
    assert torch.allclose(cka_matrix(Ys, Xs, debiased), ref.T, atol=1e-12, rtol=0)
    one = cka_matrix(Xs[2], Ys[1], debiased)                                  # 2-D input: one layer
    assert one.shape == (1, 1) and one.item() == pytest.approx(ref[2, 1].item(), abs=1e-12)


def test_accumulator_memory_does_not_grow_with_rows_and_checks_shapes():
    Xs, Ys = fake_models()
    acc = CKAAccumulator()
    acc.update(Xs[:, :10], Ys[:, :10])
    size = acc.state_nbytes
    for s in range(10, 120, 10):
        acc.update(Xs[:, s:s + 10], Ys[:, s:s + 10])
    assert acc.state_nbytes == size
    with pytest.raises(ValueError, match="same rows"):
        acc.update(Xs[:, :5], Ys[:, :6])
    with pytest.raises(ValueError, match="differ"):
        acc.update(Xs[:2, :5], Ys[:, :5])
    small = CKAAccumulator()
    small.update(Xs[:, :3], Ys[:, :3])
    with pytest.raises(ValueError, match="n > 3"):
        small.compute(debiased=True)
    with pytest.raises(ValueError, match="debiased=False"):
        c = CKAAccumulator(debiased=False)
        c.update(Xs, Ys)
        c.compute(debiased=True)
