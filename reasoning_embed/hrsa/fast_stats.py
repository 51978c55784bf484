"""Fast exact text-level bootstrap and permutation nulls for linear CKA and k-NN overlap.

They draw exactly the same resamples as :func:`~reasoning_embed.hrsa.bootstrap_ci` and
:func:`~reasoning_embed.hrsa.permutation_test` for the same ``seed`` and ``groups``, and return
the same values (the tests compare them with the generic versions), only without recomputing
everything per resample:

* :func:`cka_bootstrap_ci` — a bootstrap sample is the original rows with integer multiplicities
  (the count of draws of their text); biased and debiased linear CKA of the resampled matrix are
  computed from multiplicity-weighted centred statistics in one pass (three weighted GEMMs), and
  both estimators share the resamples. The debiased feature-space formula is an identity for any
  matrix, duplicated rows included, so the weighted value equals ``linear_cka(X[r], Y[r], True)``.
* :func:`knn_bootstrap_ci` — with bootstrap copies collapsed (``row_ids``, as
  :func:`~reasoning_embed.hrsa.knn_jaccard` does), the neighbour pool of a resample is the set of
  drawn rows, and a row's k nearest drawn rows are the first k drawn rows of its full ordered
  neighbour list. The lists are computed once (``top`` candidates per row); a row with fewer than
  k drawn rows among its candidates falls back to an exact search over the drawn rows.
* :func:`knn_permutation_test` — permuting texts only relabels Y's rows, so Y's neighbour lists
  are relabelled instead of recomputed: ``N_{Y[p]}(t) = p^{-1}(N_Y(p[t]))``.

Rows must be distinct (deduplicate first, e.g. with :func:`~reasoning_embed.hrsa.dedupe_rows`);
with exact ties the neighbour order after relabelling can differ from a recomputation.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._tensor import as_f64, same_rows
from .cka import debias_hsic
from .knn import _order_candidates, _prepare, knn_indices
from .stats import BootstrapResult, PermutationResult, _group_rows, group_permutations, permutation_p_value

__all__ = ["cka_bootstrap_ci", "knn_bootstrap_ci", "knn_permutation_test"]


def _bootstrap_weights(groups, n: int, n_boot: int, seed: int):
    """Row multiplicities of each bootstrap sample, drawn as :func:`bootstrap_ci` draws them."""
    blocks = _group_rows(groups, n)
    G = len(blocks)
    if G < 2:
        raise ValueError("bootstrap needs at least 2 groups")
    row_group = np.empty(n, dtype=np.int64)
    for g, b in enumerate(blocks):
        row_group[b] = g
    rng = np.random.default_rng(seed)

    def gen():
        for _ in range(n_boot):
            gw = np.bincount(rng.integers(0, G, size=G), minlength=G)
            yield torch.from_numpy(gw[row_group].astype(np.float64))

    return gen(), G


def _interval(samples: torch.Tensor, alpha: float) -> tuple[float, float]:
    ok = samples[torch.isfinite(samples)]
    if ok.numel() < samples.numel():
        warnings.warn(f"{samples.numel() - ok.numel()} bootstrap samples gave non-finite values and were ignored",
                      RuntimeWarning, stacklevel=3)
    if ok.numel() == 0:
        return float("nan"), float("nan")
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    lo, hi = torch.quantile(ok, q)
    return float(lo), float(hi)


def _weighted_cka(X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, x2: torch.Tensor,
                  y2: torch.Tensor) -> tuple[float, float]:
    """(biased, debiased) linear CKA of the matrix holding row t of (X, Y) w_t times.

    Uncentred weighted statistics, centred afterwards (X, Y should be roughly centred already);
    ``x2``, ``y2``: squared row norms of X and Y.
    """
    N = float(w.sum())
    Xw = X * w[:, None]
    m = Xw.sum(0) / N
    p = (w @ Y) / N
    C = Xw.T @ Y - N * torch.outer(m, p)
    Sx = Xw.T @ X - N * torch.outer(m, m)
    Sy = (Y * w[:, None]).T @ Y - N * torch.outer(p, p)
    xy, xx, yy = (torch.linalg.matrix_norm(M) ** 2 for M in (C, Sx, Sy))
    biased = float(xy / torch.sqrt(xx * yy)) if float(xx) > 0 and float(yy) > 0 else float("nan")
    if N <= 3:
        return biased, float("nan")
    a = x2 - 2.0 * (X @ m) + m @ m                   # squared norms of the centred rows
    b = y2 - 2.0 * (Y @ p) + p @ p
    wa, wb = w * a, w * b
    sa, sb = float(wa.sum()), float(wb.sum())
    xy_u = debias_hsic(xy, float(wa @ b), sa, sb, N)
    xx_u, yy_u = debias_hsic(xx, float(wa @ a), sa, sa, N), debias_hsic(yy, float(wb @ b), sb, sb, N)
    debiased = float(xy_u / torch.sqrt(xx_u * yy_u)) if float(xx_u) > 0 and float(yy_u) > 0 else float("nan")
    return biased, debiased


def cka_bootstrap_ci(X, Y, groups=None, n_boot: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, BootstrapResult]:
    """Text-level percentile bootstrap of biased and debiased linear CKA (``{"biased": .., "debiased": ..}``).

    Same resamples and values as ``bootstrap_ci(lambda X, Y: linear_cka(X, Y, debiased), X, Y,
    groups, n_boot, alpha, seed)`` for each estimator.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    weights, G = _bootstrap_weights(groups, n, n_boot, seed)
    X, Y = X - X.mean(0), Y - Y.mean(0)             # shift-invariant; keeps the uncentred sums well conditioned
    x2, y2 = (X * X).sum(1), (Y * Y).sum(1)
    est = _weighted_cka(X, Y, torch.ones(n, dtype=torch.float64, device=X.device), x2, y2)
    samples = torch.empty(2, n_boot, dtype=torch.float64)
    for i, w in enumerate(weights):
        w = w.to(X.device)
        r = torch.nonzero(w).flatten()
        samples[:, i] = torch.tensor(_weighted_cka(X[r], Y[r], w[r], x2[r], y2[r]), dtype=torch.float64)
    out = {}
    for j, name in enumerate(("biased", "debiased")):
        lo, hi = _interval(samples[j], alpha)
        out[name] = BootstrapResult(estimate=est[j], low=lo, high=hi, alpha=alpha, samples=samples[j], n_groups=G)
    return out


def _first_valid(lists: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first k entries of ``lists`` where ``valid``; returns (rows that have k, their n_ok x k)."""
    ok = valid.sum(1) >= k
    v = valid[ok]
    sel = v & (torch.cumsum(v.to(torch.int32), 1) <= k)
    return ok, lists[ok][sel].view(-1, k)


def _pool_knn(Z, sq, lists, pool, rows, k):
    """k nearest pool members (other than itself) of each row in ``rows`` (LongTensor)."""
    out = torch.empty(rows.numel(), k, dtype=torch.long, device=lists.device)
    valid = pool[lists[rows]]
    ok, first = _first_valid(lists[rows], valid, k)
    out[ok] = first
    bad = rows[~ok]
    if bad.numel():                                    # exact search among the drawn rows
        cand = torch.nonzero(pool).flatten()
        S = Z[bad] @ Z[cand].T
        if sq is not None:
            S.mul_(2.0).sub_(sq[cand][None, :])
        S[bad[:, None] == cand[None, :]] = float("-inf")
        out[~ok] = cand[_order_candidates(S, k)]
    return out


def _jaccard_multi(a: torch.Tensor, b: torch.Tensor, ks) -> list[torch.Tensor]:
    """Per-row Jaccard of the first k entries of ordered neighbour lists a and b, for every k in ks.

    One sort and one search for all k: r[t, j] is the rank of a[t, j] in b[t] (len(b[t]) if absent),
    so |a_k(t) ∩ b_k(t)| = #{j < k : r[t, j] < k}.
    """
    bs, bo = torch.sort(b, dim=1)
    pos = torch.searchsorted(bs, a.contiguous()).clamp_max(b.shape[1] - 1)
    hit = bs.gather(1, pos) == a
    rank = torch.where(hit, bo.gather(1, pos), torch.full_like(pos, b.shape[1]))
    out = []
    for k in ks:
        inter = (rank[:, :k] < k).sum(1).to(torch.float64)
        out.append(inter / (2 * k - inter))
    return out


def _check_ks(k, n):
    ks = (int(k),) if isinstance(k, int) else tuple(sorted({int(v) for v in k}))
    for kk in ks:
        if not 0 < kk < n:
            raise ValueError(f"k must satisfy 0 < k < n (n={n} rows), got k={kk}")
    return ks


def knn_bootstrap_ci(X, Y, groups=None, k=(5, 10, 50), metric: str = "cosine", n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, top: int | None = None) -> dict[int, BootstrapResult]:
    """Text-level percentile bootstrap of the k-NN Jaccard overlap, per k (exact; see the module docstring).

    Same resamples and values as ``bootstrap_ci(lambda X, Y, row_ids: knn_jaccard(X, Y, k,
    row_ids=row_ids).jaccard[k], X, Y, groups, n_boot, alpha, seed, pass_row_ids=True)``
    (rows distinct). ``top``: candidates kept per row (default ``min(n - 1, 3 * max(k))``).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    ks = _check_ks(k, n)
    kmax = ks[-1]
    top = min(n - 1, top or 3 * kmax)
    if top < kmax:
        raise ValueError(f"top={top} must be >= max(k)={kmax}")
    Zx, sqx = _prepare(X, metric)
    Zy, sqy = _prepare(Y, metric)
    nx, ny = knn_indices(X, top, metric), knn_indices(Y, top, metric)
    est = {kk: float(J.mean()) for kk, J in zip(ks, _jaccard_multi(nx[:, :kmax], ny[:, :kmax], ks))}
    weights, G = _bootstrap_weights(groups, n, n_boot, seed)
    samples = torch.empty(len(ks), n_boot, dtype=torch.float64)
    for i, w in enumerate(weights):
        w = w.to(X.device)
        pool = w > 0
        rows = torch.nonzero(pool).flatten()
        if rows.numel() <= kmax:
            samples[:, i] = float("nan")
            continue
        a = _pool_knn(Zx, sqx, nx, pool, rows, kmax)
        b = _pool_knn(Zy, sqy, ny, pool, rows, kmax)
        wr = w[rows]
        for j, J in enumerate(_jaccard_multi(a, b, ks)):
            samples[j, i] = float((wr * J).sum() / wr.sum())
    out = {}
    for j, kk in enumerate(ks):
        lo, hi = _interval(samples[j], alpha)
        out[kk] = BootstrapResult(estimate=est[kk], low=lo, high=hi, alpha=alpha, samples=samples[j], n_groups=G)
    return out


def knn_permutation_test(X, Y, groups=None, k=(5, 10, 50), metric: str = "cosine", n_perm: int = 1000,
                         seed: int = 0, tie_tol: float = 1e-12) -> dict[int, PermutationResult]:
    """Permutation null of the k-NN Jaccard overlap (texts of Y re-paired with texts of X), per k.

    Same permutations and (for distinct rows) values as ``permutation_test(lambda X, Y:
    knn_jaccard(X, Y, k).jaccard[k], X, Y, groups, n_perm, seed)``.
    """
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    ks = _check_ks(k, n)
    kmax = ks[-1]
    nx, ny = knn_indices(X, kmax, metric), knn_indices(Y, kmax, metric)
    perms, scheme, frac = group_permutations(groups, n, n_perm, seed)
    observed = {kk: float(J.mean()) for kk, J in zip(ks, _jaccard_multi(nx, ny, ks))}
    null = torch.empty(len(ks), n_perm, dtype=torch.float64)
    for i, p in enumerate(perms):
        p = p.to(X.device)
        pinv = torch.empty_like(p)
        pinv[p] = torch.arange(n, device=p.device)
        nyp = pinv[ny[p]]                          # neighbours of row t in Y[p], in Y[p]'s row labels
        for j, J in enumerate(_jaccard_multi(nx, nyp, ks)):
            null[j, i] = float(J.mean())
    return {kk: PermutationResult(observed=observed[kk], null=null[j],
                                  p_value=permutation_p_value(observed[kk], null[j], tie_tol), n_perm=n_perm,
                                  scheme=scheme, exchangeable_fraction=frac)
            for j, kk in enumerate(ks)}
