"""Property tests for the HRSA metrics (docs/hrsa-metrics.md, "Properties")."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoning_embed.hrsa import (
    clamp_quantile, dedupe_rows, dimension_wise_correlation, hsic_unbiased, inverse_row_entropy,
    knn_indices, knn_jaccard, linear_cka, linear_cka_gram, massive_activation_dims,
    orthogonal_procrustes, random_rotation_entropy_baseline, split_rows, zscore_columns,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def haar(g, d):
    """Haar-random orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = torch.linalg.qr(randn(g, d, d))
    return q * torch.sign(torch.diagonal(r))[None, :]


# ------------------------------------------------------------------------------------------ CKA
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_x_with_itself_is_one(debiased):
    X = randn(gen(0), 40, 6) + 3.0
    assert linear_cka(X, X, debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka_gram(X, X, debiased) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=15, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 10_000), c=st.floats(0.05, 20.0), shift=st.floats(-50.0, 50.0))
def test_cka_invariant_to_orthogonal_scale_and_shift(seed, c, shift):
    g = gen(seed)
    X = randn(g, 30, 5)
    Q = haar(g, 5)
    v = shift * randn(g, 1, 5)
    Y = c * X @ Q + v
    for debiased in (False, True):
        assert linear_cka(X, Y, debiased) == pytest.approx(1.0, abs=1e-9)


def test_cka_below_one_for_non_orthogonal_map():
    g = gen(1)
    X = randn(g, 200, 8)
    A = torch.diag(torch.linspace(0.2, 3.0, 8, dtype=torch.float64)) @ haar(g, 8)
    for debiased in (False, True):
        val = linear_cka(X, X @ A, debiased)
        assert val < 0.95, val
        assert val == pytest.approx(linear_cka_gram(X, X @ A, debiased), abs=1e-12)


@pytest.mark.parametrize("n,dx,dy", [(50, 7, 5), (12, 30, 40)])   # d < n and d > n
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_feature_form_equals_gram_form(n, dx, dy, debiased):
    g = gen(2)
    X = randn(g, n, dx) + 4.0
    Y = randn(g, n, dy) - 2.0
    Y[:, :3] += X[:, :3]                     # some shared structure
    assert linear_cka(X, Y, debiased) == pytest.approx(linear_cka_gram(X, Y, debiased), abs=1e-12)


def test_debiased_cka_equals_song_unbiased_hsic_formula():
    g = gen(3)
    X, Y = randn(g, 25, 4) + 1.0, randn(g, 25, 6)
    Y[:, 0] += 2 * X[:, 1]
    K, L = X @ X.T, Y @ Y.T                  # uncentred: Song's estimator needs no centring
    song = hsic_unbiased(K, L) / math.sqrt(hsic_unbiased(K, K) * hsic_unbiased(L, L))
    assert linear_cka(X, Y, debiased=True) == pytest.approx(song, abs=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_symmetric(debiased):
    g = gen(4)
    X, Y = randn(g, 40, 6), randn(g, 40, 9)
    Y[:, :2] += X[:, :2]
    assert linear_cka(X, Y, debiased) == pytest.approx(linear_cka(Y, X, debiased), abs=1e-14)


def test_debiased_cka_of_independent_data_near_zero_while_biased_grows_with_d_over_n():
    g = gen(5)
    n = 200
    biased, debiased = [], []
    for d in (10, 100, 400):
        b, u = [], []
        for _ in range(3):
            X, Y = randn(g, n, d), randn(g, n, d)
            b.append(linear_cka(X, Y))
            u.append(linear_cka(X, Y, debiased=True))
        biased.append(np.mean(b))
        debiased.append(np.mean(u))
    assert biased[0] < biased[1] < biased[2]
    assert biased[2] > 0.5                   # inflated at d/n = 2
    assert all(abs(u) < 0.03 for u in debiased), debiased
    assert all(b > abs(u) for b, u in zip(biased, debiased))
    assert biased[1] > abs(debiased[1]) + 0.2


def test_unbiased_hsic_refuses_n_le_3():
    X = randn(gen(6), 3, 4)
    with pytest.raises(ValueError, match="n > 3"):
        linear_cka(X, X, debiased=True)
    with pytest.raises(ValueError, match="n > 3"):
        linear_cka_gram(X, X, debiased=True)
    with pytest.raises(ValueError, match="n > 3"):
        hsic_unbiased(X @ X.T, X @ X.T)
    assert linear_cka(randn(gen(6), 4, 4), randn(gen(7), 4, 4), debiased=True) == linear_cka(
        randn(gen(6), 4, 4), randn(gen(7), 4, 4), debiased=True)          # n = 4 is accepted


def test_cka_accepts_numpy_and_float32():
    g = gen(8)
    X, Y = randn(g, 30, 5), randn(g, 30, 5)
    ref = linear_cka(X, Y)
    assert linear_cka(X.numpy(), Y.numpy()) == pytest.approx(ref, abs=1e-14)
    assert linear_cka(X.float(), Y.float()) == pytest.approx(ref, abs=1e-6)


# ----------------------------------------------------------------------------------- Procrustes
def test_procrustes_distance_zero_for_rotated_shifted_copy():
    g = gen(10)
    X = randn(g, 100, 8)
    Y = X @ haar(g, 8) + 5.0
    r = orthogonal_procrustes(X, Y)
    assert r.rvr == pytest.approx(0.0, abs=1e-20)
    assert r.cosine == pytest.approx(1.0, abs=1e-12)
    assert r.row_cosine == pytest.approx(1.0, abs=1e-12)
    assert r.warnings == []


def test_procrustes_recovers_q_when_n_ge_d():
    g = gen(11)
    d = 12
    for n in (d + 1, 5 * d):                 # centring costs a row: n = d + 1 is the minimum
        X = randn(g, n, d)
        Q = haar(g, d)
        r = orthogonal_procrustes(X, X @ Q)
        assert torch.allclose(r.O, Q, atol=1e-9)
        assert r.rank == d
        assert torch.allclose(r.O.T @ r.O, torch.eye(d, dtype=torch.float64), atol=1e-12)


def test_procrustes_held_out_cosine_of_independent_data_near_zero_in_sample_optimistic():
    g = gen(12)
    d = 32
    X, Y = randn(g, 8 * d, d), randn(g, 8 * d, d)
    fit, test = split_rows(8 * d, test_fraction=0.5, seed=0)
    r = orthogonal_procrustes(X[fit], Y[fit], X[test], Y[test])   # n_fit = 4d
    assert r.cosine > 0.3 and r.row_cosine > 0.3                  # spec: 0.41 at n = 4d
    assert abs(r.cosine_test) < 0.1 and abs(r.row_cosine_test) < 0.1
    assert r.rvr_test > r.rvr
    assert r.n_test == len(test) and r.n_over_d == pytest.approx(4.0)


def test_procrustes_held_out_uses_fit_means():
    g = gen(13)
    X = randn(g, 60, 4)
    Q = haar(g, 4)
    Y = X @ Q + 3.0
    s = torch.ones(1, 4, dtype=torch.float64)
    # held-out rows moved consistently (x + s -> y + s Q) are still predicted exactly ...
    r = orthogonal_procrustes(X[:40], Y[:40], X[40:] + s, Y[40:] + s @ Q)
    assert r.rvr_test == pytest.approx(0.0, abs=1e-20)
    # ... but a shift of the held-out Y alone is an error, which centring the test rows with
    # their own means would hide
    r2 = orthogonal_procrustes(X[:40], Y[:40], X[40:], Y[40:] + 1.0)
    assert r2.rvr_test > 0.1 and r2.rvr == pytest.approx(0.0, abs=1e-20)


def test_procrustes_warns_when_n_below_d():
    g = gen(14)
    X = randn(g, 8, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = orthogonal_procrustes(X, X)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("not identifiable" in m for m in msgs) and any("rank" in m for m in msgs)
    assert msgs == r.warnings
    assert r.n_over_d == 0.5 and r.rank <= 7
    assert any("rank" in w for w in r.warnings)
    # X against itself at n = d/2: O is not the identity, the basis looks "lost"
    assert inverse_row_entropy(r.O) < 0.9


def test_procrustes_warns_on_rank_deficient_cross_covariance():
    g = gen(15)
    X = randn(g, 100, 6)
    Y = randn(g, 100, 6)
    Y[:, 3:] = 0.0
    with pytest.warns(RuntimeWarning, match="rank"):
        r = orthogonal_procrustes(X, Y)
    assert r.rank == 3


def test_split_rows_keeps_groups_together_and_is_deterministic():
    groups = np.repeat(np.arange(20), np.arange(1, 21))   # texts of 1..20 tokens
    n = len(groups)
    fit, test = split_rows(n, 0.25, seed=3, groups=groups)
    assert len(set(groups[fit.numpy()]) & set(groups[test.numpy()])) == 0
    assert sorted(np.concatenate([fit.numpy(), test.numpy()])) == list(range(n))
    assert len(set(groups[test.numpy()])) == 5
    f2, t2 = split_rows(n, 0.25, seed=3, groups=groups)
    assert torch.equal(fit, f2) and torch.equal(test, t2)
    f, t = split_rows(10, 0.3, seed=0)
    assert len(t) == 3 and len(f) == 7


# --------------------------------------------------------------------------- inverse row entropy
def test_inverse_row_entropy_one_for_identity_and_signed_permutations():
    d = 16
    assert inverse_row_entropy(torch.eye(d)) == pytest.approx(1.0, abs=1e-15)
    rng = np.random.default_rng(0)
    P = np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], size=d)[None, :]
    assert inverse_row_entropy(P) == pytest.approx(1.0, abs=1e-15)


def test_inverse_row_entropy_of_haar_rotation_matches_baseline():
    g = gen(20)
    d = 64
    vals = [inverse_row_entropy(haar(g, d)) for _ in range(20)]
    assert np.mean(vals) == pytest.approx(random_rotation_entropy_baseline(d, exact=True), abs=0.003)
    assert np.mean(vals) == pytest.approx(random_rotation_entropy_baseline(d), abs=0.01)


def test_inverse_row_entropy_zero_for_maximally_spread_rotation():
    from scipy.linalg import hadamard

    H = torch.from_numpy(hadamard(16).astype(np.float64)) / 4.0      # orthogonal, all P_ij = 1/16
    assert torch.allclose(H @ H.T, torch.eye(16, dtype=torch.float64))
    assert inverse_row_entropy(H) == pytest.approx(0.0, abs=1e-14)


def test_random_rotation_baseline_figures_from_spec():
    assert random_rotation_entropy_baseline(1536) == pytest.approx(0.099, abs=5e-4)
    assert random_rotation_entropy_baseline(4096) == pytest.approx(0.088, abs=5e-4)
    # the finite-d value converges to the large-d formula
    assert random_rotation_entropy_baseline(1536, exact=True) == pytest.approx(0.099, abs=2e-3)


def test_inverse_row_entropy_invariant_to_signed_permutations():
    g = gen(21)
    d = 10
    O = haar(g, d) @ torch.diag(torch.tensor([1.0] * 3 + [0.0] * 7, dtype=torch.float64)) + torch.eye(d) * 0.5
    O, _ = torch.linalg.qr(O)                # something between identity and a full rotation
    rng = np.random.default_rng(1)
    P1 = torch.from_numpy(np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], size=d))
    P2 = torch.from_numpy(np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], size=d))
    base = inverse_row_entropy(O)
    assert 0.1 < base < 0.99
    assert inverse_row_entropy(P1 @ O @ P2) == pytest.approx(base, abs=1e-13)


# ------------------------------------------------------------------- dimension-wise correlation
def test_dim_corr_of_x_with_itself_is_one_per_column():
    X = randn(gen(30), 50, 7)
    r = dimension_wise_correlation(X, X)
    assert torch.allclose(r.r, torch.ones(7, dtype=torch.float64), atol=1e-14)
    assert r.mean == pytest.approx(1.0) and r.n_excluded == 0


def test_dim_corr_affine_per_column_gives_sign():
    g = gen(31)
    X = randn(g, 50, 6)
    a = torch.tensor([2.0, -0.5, 3.0, -7.0, 0.1, -1.0], dtype=torch.float64)
    b = randn(g, 6)
    r = dimension_wise_correlation(X, X * a + b)
    assert torch.allclose(r.r, torch.sign(a), atol=1e-14)


def test_dim_corr_near_zero_after_rotation():
    g = gen(32)
    d = 64
    X = randn(g, 2000, d)
    r = dimension_wise_correlation(X, X @ haar(g, d))
    assert abs(r.mean) < 0.1
    assert r.r.abs().mean() < 0.2            # each column is a different mixture


def test_dim_corr_reports_zero_variance_columns():
    g = gen(33)
    X = randn(g, 40, 5)
    Y = X.clone()
    X[:, 1] = 3.0                            # constant in X
    Y[:, 4] = -2.0                           # constant in Y
    r = dimension_wise_correlation(X, Y)
    assert r.n_excluded == 2 and r.excluded.tolist() == [1, 4] and r.n_valid == 3
    assert math.isnan(r.r[1]) and math.isnan(r.r[4])
    assert r.mean == pytest.approx(1.0)      # not dragged down by the excluded columns


# ------------------------------------------------------------------------------------------ kNN
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_knn_overlap_of_x_with_itself_is_one_under_rotation_and_scaling(metric):
    g = gen(40)
    X = randn(g, 150, 6)
    Y = 7.5 * X @ haar(g, 6)
    if metric == "l2":
        Y = Y + 100.0 * randn(g, 1, 6)       # translation too
    for Z in (X, Y):
        r = knn_jaccard(X, Z, k=(5, 10, 50), metric=metric)
        assert r.jaccard == {5: 1.0, 10: 1.0, 50: 1.0}
        assert r.mutual == {5: 1.0, 10: 1.0, 50: 1.0}


def test_knn_cosine_is_not_translation_invariant():
    g = gen(41)
    X = randn(g, 150, 6)
    assert knn_jaccard(X, X + 3.0, k=10).jaccard[10] < 0.9


def test_knn_independent_data_near_chance():
    g = gen(42)
    n = 400
    r = knn_jaccard(randn(g, n, 8), randn(g, n, 8), k=(5, 10, 50))
    for k in (5, 10, 50):
        assert r.chance_mutual[k] == pytest.approx(k / (n - 1))
        assert r.mutual[k] == pytest.approx(r.chance_mutual[k], abs=0.01 + 0.2 * r.chance_mutual[k])
        assert r.jaccard[k] == pytest.approx(r.chance_jaccard[k], abs=0.01 + 0.2 * r.chance_jaccard[k])


@settings(max_examples=15, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_dup=st.integers(1, 30), metric=st.sampled_from(["cosine", "l2"]))
def test_knn_row_never_its_own_neighbour_even_with_duplicates(seed, n_dup, metric):
    g = gen(seed)
    X = randn(g, 30, 3)
    dup = torch.randint(0, 30, (n_dup,), generator=g)
    Xd = torch.cat([X, X[dup], X[dup]])      # some rows appear three times
    n = Xd.shape[0]
    nb = knn_indices(Xd, 5, metric=metric, chunk_size=7)
    assert not (nb == torch.arange(n)[:, None]).any()
    # an exact copy is at distance 0, so it is the first neighbour of its twin
    for j, src in enumerate(dup.tolist()):
        assert nb[src, 0] != src and torch.equal(Xd[nb[src, 0]], Xd[src])
        assert torch.equal(Xd[nb[30 + j, 0]], Xd[30 + j])


def test_knn_ties_broken_by_index():
    C = torch.zeros(12, 3)                   # all rows identical: every similarity ties
    nb = knn_indices(C, 4, metric="l2")
    expect = torch.stack([torch.tensor([j for j in range(12) if j != i][:4]) for i in range(12)])
    assert torch.equal(nb, expect)
    g = gen(43)
    X = randn(g, 20, 3)
    Xd = torch.cat([X, X, X])                 # each row has two exact twins
    nb = knn_indices(Xd, 5)
    for i in range(60):
        twins = sorted({i % 20, i % 20 + 20, i % 20 + 40} - {i})
        assert nb[i, :2].tolist() == twins    # ties at the top in index order


def test_knn_k_range_enforced():
    X = randn(gen(44), 10, 3)
    for k in (0, 10, 11, -1):
        with pytest.raises(ValueError, match="0 < k < n"):
            knn_jaccard(X, X, k=k)
    knn_jaccard(X, X, k=9)                   # k = n - 1 is fine
    with pytest.raises(ValueError, match="0 < k < n"):   # 5 distinct rows after dedupe
        knn_jaccard(torch.cat([X[:5], X[:5]]), torch.cat([X[:5], X[:5]]), k=5, dedupe=True)


def test_knn_chunked_equals_unchunked():
    g = gen(45)
    X, Y = randn(g, 97, 5), randn(g, 97, 5)
    Y[:, :2] += X[:, :2]
    for metric in ("cosine", "l2"):
        full = knn_indices(X, 12, metric, chunk_size=97)
        for cs in (1, 8, 50):
            assert torch.equal(knn_indices(X, 12, metric, chunk_size=cs), full)
        a = knn_jaccard(X, Y, k=(3, 12), metric=metric, chunk_size=97)
        b = knn_jaccard(X, Y, k=(3, 12), metric=metric, chunk_size=5)
        assert a.jaccard == b.jaccard and a.mutual == b.mutual


def test_knn_matches_brute_force_sort():
    g = gen(46)
    X = randn(g, 60, 4)
    S = (X / X.norm(dim=1, keepdim=True)) @ (X / X.norm(dim=1, keepdim=True)).T
    S.fill_diagonal_(-float("inf"))
    expect = torch.argsort(-S, dim=1, stable=True)[:, :7]
    assert torch.equal(knn_indices(X, 7), expect)


def test_knn_dedupe_and_row_ids_restore_one_for_identical_geometry_with_copies():
    g = gen(47)
    X = randn(g, 200, 6)
    idx = torch.randint(0, 200, (300,), generator=g)   # bootstrap-like copies
    Xb, Yb = X[idx], X[idx] @ haar(g, 6)
    r_ids = knn_jaccard(Xb, Yb, k=10, row_ids=idx)
    r_dd = knn_jaccard(Xb, Yb, k=10, dedupe=True)
    assert r_ids.jaccard[10] == 1.0 and r_dd.jaccard[10] == 1.0
    assert r_ids.n_unique == len(torch.unique(idx)) == r_dd.n_unique
    assert r_ids.per_row_jaccard[10].shape == (300,)
    keep, inv = dedupe_rows(Xb, Yb)
    assert torch.equal(Xb[keep][inv], Xb) and len(keep) == r_dd.n_unique


# ------------------------------------------------------------------------- massive activations
def test_massive_activation_detection_and_preprocessing():
    g = gen(50)
    n, d = 1000, 64
    X, Y = randn(g, n, d), randn(g, n, d)
    sinks = torch.arange(0, n, 100)          # 1% of rows, one huge dimension each model
    X[sinks, 3] = 1000.0
    Y[sinks, 7] = -800.0
    rep = massive_activation_dims(X, ratio=100)
    assert rep.dims.tolist() == [3] and torch.equal(rep.rows, sinks)
    assert rep.row_fraction[0] == pytest.approx(0.01) and rep.max_abs[0] == 1000.0
    assert rep.ratio[0] > 1000
    assert massive_activation_dims(randn(g, n, d)).dims.numel() == 0
    # the pitfall: shared sink rows make independent data look identical
    assert linear_cka(X, Y) > 0.99
    keep = torch.ones(n, dtype=torch.bool)
    keep[rep.rows] = False
    for Xp, Yp in ((X[keep], Y[keep]), (clamp_quantile(X, 0.999), clamp_quantile(Y, 0.999)),
                   (zscore_columns(X), zscore_columns(Y))):
        assert linear_cka(Xp, Yp) < 0.15


def test_zscore_and_clamp_basic_properties():
    g = gen(51)
    X = randn(g, 200, 5) * torch.tensor([1.0, 10.0, 0.1, 5.0, 1.0], dtype=torch.float64) + 3.0
    X[:, 4] = 2.0
    Z = zscore_columns(X)
    assert torch.allclose(Z[:, :4].mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(Z[:, :4].std(0, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert torch.all(Z[:, 4] == 0)
    C = clamp_quantile(X, 0.9)
    c = np.quantile(X.abs().numpy(), 0.9)
    assert C.abs().max() == pytest.approx(c) and (C == X).double().mean() >= 0.9
    Cc = clamp_quantile(X, 0.9, per_column=True)
    assert torch.all(Cc.abs().max(0).values <= torch.from_numpy(np.quantile(X.abs().numpy(), 0.9, axis=0)) + 1e-12)
    with pytest.raises(ValueError):
        clamp_quantile(X, 0.0)
