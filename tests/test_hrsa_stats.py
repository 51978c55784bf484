"""Bootstrap and permutation nulls (docs/hrsa-metrics.md, "Nulls" and "Statistics")."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reasoning_embed.hrsa import (bootstrap_ci, cka_permutation_test, group_permutations, knn_jaccard,
                                  linear_cka, permutation_p_value, permutation_test)


pytestmark = pytest.mark.usefixtures("one_thread")


def related(seed=0, n=40, dx=5, dy=7, strength=0.3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dx, generator=g, dtype=torch.float64)
    Y = torch.randn(n, dy, generator=g, dtype=torch.float64)
    Y[:, :2] += strength * X[:, :2]
    return X, Y


# ----------------------------------------------------------------------------- permutation null
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("method", ["feature", "gram"])
@pytest.mark.parametrize("grouped", [False, True])
def test_optimised_cka_null_equals_naive_recomputation(debiased, method, grouped):
    X, Y = related()
    groups = np.repeat(np.arange(10), 4) if grouped else None
    fast = cka_permutation_test(X, Y, groups=groups, n_perm=30, seed=7, debiased=debiased, method=method)
    naive = permutation_test(lambda a, b: linear_cka(a, b, debiased), X, Y, groups=groups, n_perm=30, seed=7)
    assert fast.observed == pytest.approx(naive.observed, abs=1e-12)
    assert torch.allclose(fast.null, naive.null, atol=1e-12, rtol=0)
    assert fast.p_value == naive.p_value
    assert fast.null.std() > 0.01             # permutations really changed the pairing
    assert fast.scheme == ("groups" if grouped else "rows")


def test_identical_inputs_give_smallest_p():
    X, _ = related(n=30)
    K = 99
    for r in (cka_permutation_test(X, X, n_perm=K, seed=0),
              cka_permutation_test(X, X, n_perm=K, seed=0, debiased=True),
              permutation_test(lambda a, b: knn_jaccard(a, b, k=5).jaccard[5], X, X, n_perm=K, seed=0)):
        assert r.observed == pytest.approx(1.0)
        assert r.p_value <= 1 / (K + 1)


def test_p_value_formula():
    assert permutation_p_value(0.5, [0.1, 0.2, 0.6, 0.5]) == pytest.approx(3 / 5)   # ties count
    assert permutation_p_value(1.0, [0.0] * 9) == pytest.approx(0.1)


def _fraction_rejected(groups_for_test, n_sets=300, K=49):
    """p-values of CKA under H0 for data with a per-text effect in both X and Y (independent)."""
    rng = np.random.default_rng(123)
    gid = np.repeat(np.arange(10), 5)
    ps = []
    for rep in range(n_sets):
        X = rng.normal(size=(10, 3))[gid] * 2 + rng.normal(size=(50, 3))
        Y = rng.normal(size=(10, 3))[gid] * 2 + rng.normal(size=(50, 3))
        ps.append(cka_permutation_test(X, Y, groups=gid if groups_for_test else None, n_perm=K, seed=rep).p_value)
    return np.asarray(ps)


def test_p_values_super_uniform_under_null_rows():
    rng = np.random.default_rng(0)
    ps = np.asarray([cka_permutation_test(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)),
                                          n_perm=49, seed=s).p_value for s in range(400)])
    # P(p <= a) <= a for a valid test; 400 sets -> binomial sd about 0.015 at a = 0.1
    for a, tol in ((0.05, 0.035), (0.1, 0.045), (0.5, 0.07)):
        assert (ps <= a).mean() <= a + tol, (a, (ps <= a).mean())
    assert (ps <= 0.5).mean() > 0.35          # ... and not trivially conservative


def test_p_values_super_uniform_when_permuting_texts_not_rows():
    ps_groups = _fraction_rejected(True)
    assert (ps_groups <= 0.1).mean() <= 0.1 + 0.055
    assert (ps_groups <= 0.5).mean() <= 0.5 + 0.08
    # Permuting token rows when rows of one text are dependent is badly anti-conservative:
    # this is why nulls permute texts.
    ps_rows = _fraction_rejected(False, n_sets=60)
    assert (ps_rows <= 0.1).mean() > 0.4


def test_group_permutations_move_whole_groups_within_size_classes():
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5])   # sizes 2,2,2,3,3,1
    with pytest.warns(RuntimeWarning, match="stay in place"):
        perms, scheme, frac = group_permutations(groups, len(groups), 20, seed=0)
    assert scheme == "groups" and frac == pytest.approx(12 / 13)
    for p in perms:
        p = p.numpy()
        assert sorted(p) == list(range(13)) and p[12] == 12
        for g in range(5):                   # each group's rows map, in order, onto one group's rows
            rows = np.flatnonzero(groups == g)
            target = groups[p[rows]]
            assert len(set(target)) == 1 and (np.diff(p[rows]) == 1).all()
            assert (groups == target[0]).sum() == len(rows)
    with pytest.raises(ValueError, match="impossible"):
        group_permutations(np.array([0, 1, 1, 2, 2, 2]), 6, 5)
    a = [p for p in group_permutations(None, 8, 3, seed=4)[0]]
    b = [p for p in group_permutations(None, 8, 3, seed=4)[0]]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# -------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_resamples_whole_texts():
    X, Y = related(n=30)
    groups = np.repeat(np.arange(6), 5)
    seen = []

    def metric(a, b, row_ids):
        seen.append(row_ids.numpy().copy())
        return linear_cka(a, b)

    r = bootstrap_ci(metric, X, Y, groups=groups, n_boot=20, seed=0, pass_row_ids=True)
    assert r.n_groups == 6 and r.samples.shape == (20,)
    for rows in seen[1:]:
        assert len(rows) == 30
        blocks = rows.reshape(6, 5)          # 6 drawn texts, each with all its 5 rows, in order
        assert all((groups[b] == groups[b[0]]).all() and (np.diff(b) == 1).all() for b in blocks)
    assert any(len(set(groups[rows])) < 6 for rows in seen[1:])   # with replacement


def test_bootstrap_interval_deterministic_and_sensible():
    X, Y = related(n=60, strength=1.0)
    r1 = bootstrap_ci(linear_cka, X, Y, n_boot=100, seed=3)
    r2 = bootstrap_ci(linear_cka, X, Y, n_boot=100, seed=3)
    assert torch.equal(r1.samples, r2.samples) and (r1.low, r1.high) == (r2.low, r2.high)
    assert r1.low < r1.estimate < r1.high
    assert r1.estimate == pytest.approx(linear_cka(X, Y))
    narrow = bootstrap_ci(linear_cka, X, Y, n_boot=100, seed=3, alpha=0.5)
    assert r1.low <= narrow.low <= narrow.high <= r1.high


def test_bootstrap_knn_copies_are_not_neighbours_of_their_twins():
    # identical geometry (rotated copy): every bootstrap sample must score exactly 1,
    # although resampling creates duplicate rows (the 0.77 pitfall)
    g = torch.Generator().manual_seed(9)
    X = torch.randn(80, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    groups = np.repeat(np.arange(40), 2)
    r = bootstrap_ci(lambda a, b, row_ids: knn_jaccard(a, b, k=5, row_ids=row_ids).jaccard[5],
                     X, X @ q, groups=groups, n_boot=25, seed=0, pass_row_ids=True)
    assert torch.all(r.samples == 1.0) and r.low == r.high == 1.0
