"""Null-calibrated similarity: how far a score is above what unrelated representations would give.

Raw CKA and k-NN overlap are inflated by width, depth and sample size (biased CKA of independent
Gaussians is 0.43 at n = 2000, d = 1536). Calibration (Gröger, Wen, Brbić, "Revisiting the Platonic
Representation Hypothesis: An Aristotelian View", ICML 2026; reference package ``calibrated-similarity``)
puts every score on one scale:

* the permutation null re-pairs texts of Y with texts of X (``K`` permutations, :func:`group_permutations`);
* ``tau`` = the ``ceil((1 - alpha)(K + 1))``-th smallest of {observed} ∪ {null values};
* calibrated score = ``clamp((s - tau) / (smax - tau), 0, 1)``: 0 when s is not above the null at level
  alpha, 1 at the maximum ``smax``; p = ``(1 + #{null >= s}) / (K + 1)``.

For a search over La x Lb layer pairs (:func:`calibrate_layers`) the *aggregate* (max or mean of the
similarity matrix) is calibrated, with one permutation applied to every layer of Y, so picking the best
layer pair does not inflate the score. The tests check both against the reference package on the same
permutations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ._tensor import as_f64, same_rows
from .stats import group_permutations

__all__ = ["Calibrated", "calibrate_layers", "calibrate_null", "calibrated_permutation", "cka_layers_calibrated",
           "knn_overlap_null"]


@dataclass
class Calibrated:
    observed: float
    tau: float              # permutation-null threshold at alpha (order statistic of observed ∪ null)
    score: float            # clamp((observed - tau) / (smax - tau), 0, 1)
    p_value: float          # (1 + #{null >= observed}) / (K + 1)
    alpha: float
    smax: float
    n_perm: int

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def calibrate_null(observed: float, null, alpha: float = 0.05, smax: float = 1.0) -> Calibrated:
    """Calibrate ``observed`` against precomputed null values (e.g. a permutation test's ``null``)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    null = torch.as_tensor(null, dtype=torch.float64).flatten()
    null = null[torch.isfinite(null)]
    K = int(null.numel())
    if K == 0 or not math.isfinite(observed):
        nan = float("nan")
        return Calibrated(observed, nan, nan, nan, alpha, smax, K)
    combined = torch.sort(torch.cat([torch.tensor([observed], dtype=torch.float64), null])).values
    idx = min(max(math.ceil((1 - alpha) * (K + 1)) - 1, 0), K)
    tau = float(combined[idx])
    score = min(max((observed - tau) / max(smax - tau, 1e-12), 0.0), 1.0)
    p = (1 + int((null >= observed).sum())) / (K + 1)
    return Calibrated(float(observed), tau, score, p, alpha, smax, K)


def calibrated_permutation(metric_fn: Callable[..., float], X, Y, groups=None, n_perm: int = 200,
                           alpha: float = 0.05, seed: int = 0, smax: float = 1.0) -> Calibrated:
    """Calibrated ``metric_fn(X, Y)`` with a text-level permutation null computed from scratch."""
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    perms, _, _ = group_permutations(groups, n, n_perm, seed)
    observed = float(metric_fn(X, Y))
    null = [float(metric_fn(X, Y[p.to(Y.device)])) for p in perms]
    return calibrate_null(observed, null, alpha, smax)


def _aggregate(S: torch.Tensor, agg) -> float:
    if agg == "max":
        return float(S.max())
    if agg == "mean":
        return float(S.mean())
    if callable(agg):
        return float(agg(S))
    raise ValueError(f"agg must be 'max', 'mean' or a callable, got {agg!r}")


def calibrate_layers(X_layers, Y_layers, metric_fn: Callable[..., float], groups=None, agg="max",
                     n_perm: int = 200, alpha: float = 0.05, seed: int = 0,
                     smax: float = 1.0) -> tuple[Calibrated, torch.Tensor]:
    """Aggregation-aware calibration of an La x Lb layer search: ``(calibrated aggregate, S)``.

    ``S[i, j] = metric_fn(X_layers[i], Y_layers[j])``; each null draws one text permutation and applies it
    to every layer of Y, and the aggregate of the permuted matrix is one null value.
    """
    n = same_rows(X_layers[0], Y_layers[0])
    perms, _, _ = group_permutations(groups, n, n_perm, seed)

    def matrix(p=None):
        return torch.tensor([[float(metric_fn(X, Y if p is None else Y[p])) for Y in Y_layers] for X in X_layers],
                            dtype=torch.float64)

    S = matrix()
    null = [_aggregate(matrix(p), agg) for p in perms]
    return calibrate_null(_aggregate(S, agg), null, alpha, smax), S


def cka_layers_calibrated(X_layers, Y_layers, groups=None, agg="max", debiased: bool = False, n_perm: int = 200,
                          alpha: float = 0.05, seed: int = 0) -> tuple[Calibrated, torch.Tensor]:
    """:func:`calibrate_layers` for linear CKA, vectorised: centred Gram matrices once, then per permutation
    one (La x n^2) @ (n^2 x Lb) product of the gathered Grams (same permutations and values)."""
    from .cka import _center_gram

    Xs = [as_f64(X, "X") for X in X_layers]
    Ys = [as_f64(Y, "Y") for Y in Y_layers]
    n = same_rows(Xs[0], Ys[0])

    def grams(Ms):
        G = torch.stack([_center_gram(M @ M.T, debiased) if debiased else (M - M.mean(0)) @ (M - M.mean(0)).T
                         for M in Ms])
        norms = torch.sqrt((G * G).sum((1, 2)))
        return G, norms

    K, nk = grams(Xs)
    L, nl = grams(Ys)
    den = torch.outer(nk, nl)
    Kf = K.reshape(len(Xs), -1)

    def matrix(p=None):
        Lp = L if p is None else L[:, p][:, :, p]
        return (Kf @ Lp.reshape(len(Ys), -1).T) / den

    S = matrix()
    perms, _, _ = group_permutations(groups, n, n_perm, seed)
    null = [_aggregate(matrix(p.to(L.device)), agg) for p in perms]
    return calibrate_null(_aggregate(S, agg), null, alpha), S


def knn_overlap_null(X, Y, groups=None, ks=(10,), metric: str = "cosine", n_perm: int = 200,
                     seed: int = 0) -> dict[int, dict[str, tuple[float, torch.Tensor]]]:
    """Permutation nulls of the k-NN Jaccard and mutual overlap (texts of Y re-paired with texts of X).

    Permuting Y's rows only relabels its neighbour lists, ``N_{Y[p]}(t) = p^{-1}(N_Y(p[t]))``, so one search
    per model serves every permutation (rows distinct: deduplicate first). Returns, per k,
    ``{"jaccard": (observed, null), "mutual": (observed, null)}``.
    """
    from .knn import knn_indices

    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    ks = sorted({int(k) for k in ks})
    kmax = ks[-1]
    nx, ny = knn_indices(X, kmax, metric), knn_indices(Y, kmax, metric)

    def overlaps(b):
        out = {}
        for k in ks:
            inter = (nx[:, :k, None] == b[:, None, :k]).sum((1, 2)).to(torch.float64)
            out[k] = (float((inter / (2 * k - inter)).mean()), float((inter / k).mean()))
        return out

    obs = overlaps(ny)
    perms, _, _ = group_permutations(groups, n, n_perm, seed)
    null = {k: torch.empty(2, n_perm, dtype=torch.float64) for k in ks}
    for i, p in enumerate(perms):
        p = p.to(X.device)
        pinv = torch.empty_like(p)
        pinv[p] = torch.arange(n, device=p.device)
        for k, (j, m) in overlaps(pinv[ny[p]]).items():
            null[k][0, i], null[k][1, i] = j, m
    return {k: {"jaccard": (obs[k][0], null[k][0]), "mutual": (obs[k][1], null[k][1])} for k in ks}
