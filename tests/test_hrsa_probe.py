"""Cross-model linear probe properties (docs/hrsa-metrics.md, "Probe")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasoning_embed.hrsa import knn_jaccard, linear_cka, linear_probe_transfer, stratified_split


def make_task(seed=0, n=800, d=16, n_cls=4):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_cls, d, generator=g, dtype=torch.float64) * 1.5
    y = torch.arange(n) % n_cls
    A = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return A, y, q * torch.sign(torch.diagonal(r))


def splits(A, B, y, seed=0):
    tr, _, te = stratified_split(y, (0.8, 0.1, 0.1), seed=seed)
    return A[tr], y[tr], A[te], y[te], B[tr], B[te]


def test_identical_models_transfer_equals_native():
    A, y, _ = make_task()
    r = linear_probe_transfer(*splits(A, A, y))
    assert r.native > 0.9
    assert r.raw_transfer == r.native and r.aligned_transfer == r.native and r.b_own == r.native


def test_rotated_copy_transfers_at_chance_while_geometry_is_identical_and_alignment_restores():
    A, y, Q = make_task()
    B = A @ Q + 2.0                          # rotated and shifted copy: same geometry, other basis
    assert linear_cka(A, B) == pytest.approx(1.0, abs=1e-12)
    assert knn_jaccard(A, B, k=10, metric="l2").jaccard[10] == 1.0
    assert knn_jaccard(A, A @ Q, k=10, metric="cosine").jaccard[10] == 1.0
    r = linear_probe_transfer(*splits(A, B, y))
    assert r.chance == pytest.approx(0.25)
    assert r.native > 0.9 and r.b_own > 0.9
    assert r.raw_transfer < r.chance + 0.2   # about chance although CKA = k-NN = 1
    assert r.aligned_transfer == pytest.approx(r.native, abs=1e-12)


def test_shuffled_labels_give_chance():
    A, y, _ = make_task(seed=1, n=2000)
    r = linear_probe_transfer(*splits(A, A, y, seed=1), seed=3)
    assert r.native > 0.9
    assert abs(r.shuffled - r.chance) < 0.1


def test_regression_probe():
    A, _, Q = make_task(seed=2, n=400)
    w = torch.randn(A.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = A @ w + 0.1 * torch.randn(400, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    idx = np.random.default_rng(0).permutation(400)
    tr, te = idx[:320], idx[320:]
    B = A @ Q
    r = linear_probe_transfer(A[tr], y[tr], A[te], y[te], B[tr], B[te], task="regression")
    assert r.metric == "r2" and r.native > 0.95 and r.b_own > 0.95
    assert r.aligned_transfer == pytest.approx(r.native, abs=1e-9)
    assert r.raw_transfer < 0.5 and r.chance <= 0.0 and r.shuffled < 0.2


def test_stratified_split_proportions_disjoint_and_complete():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    parts = stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    allidx = np.concatenate([p.numpy() for p in parts])
    assert sorted(allidx) == list(range(100))
    tr, va, te = (p.numpy() for p in parts)
    for cls, size in ((0, 50), (1, 30), (2, 20)):
        assert (y[tr] == cls).sum() == round(0.8 * size)
        assert (y[va] == cls).sum() == round(0.1 * size) and (y[te] == cls).sum() == round(0.1 * size)
    again = stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not all(torch.equal(a, b) for a, b in zip(parts, stratified_split(y, (0.8, 0.1, 0.1), seed=1)))
    with pytest.raises(ValueError):
        stratified_split(y, (0.8, 0.3))
